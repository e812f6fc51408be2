//! Copies the guest's serial console to its log file, remembering when the
//! first line came and the last lines for error messages.
//!
//! The guest writes what it likes, as fast as it likes, with or without
//! newlines, so every copy is bounded: a line is cut into pieces of at
//! most [`Limits::line`] bytes, the log is rotated to `<log>.1` once it
//! reaches [`Limits::log_file`] bytes (so the pod keeps at most twice that
//! on the host's disk), and the tail that error messages carry holds at
//! most [`Limits::tail`] bytes, with control characters replaced so that a
//! guest cannot paint a terminal or a log viewer through them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many console lines an error message carries at most.
const TAIL_LINES: usize = 40;
/// What ends a piece of a line that was cut, in the log and the tail.
pub const CUT_MARKER: &str = " [line cut]";

/// How much of the guest's console the host keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest line kept whole, in bytes; longer ones are cut into
    /// pieces this long, each but the last ending with [`CUT_MARKER`].
    pub line: usize,
    /// The log's size at which it is rotated to `<log>.1`.
    pub log_file: u64,
    /// The most bytes of console lines an error message carries.
    pub tail: usize,
    /// The longest line an error message carries; longer ones are cut.
    pub tail_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            line: 4096,
            // With the rotated file, at most 1 MiB per pod on the host.
            log_file: 512 * 1024,
            tail: 3 * 1024,
            tail_line: 256,
        }
    }
}

#[derive(Debug, Default)]
struct Seen {
    first_line: Option<Duration>,
    tail: VecDeque<String>,
    tail_bytes: usize,
}

impl Seen {
    fn push(&mut self, line: &[u8], cut: bool, limits: &Limits) {
        let mut text = printable(line, limits.tail_line);
        if cut {
            text.push_str(CUT_MARKER);
        }
        // Each line costs its newline in the joined tail too.
        self.tail_bytes += text.len() + 1;
        self.tail.push_back(text);
        while self.tail.len() > TAIL_LINES || self.tail_bytes > limits.tail {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.len() + 1;
        }
    }
}

/// `line` as text for an error message: invalid UTF-8 and control
/// characters (escape sequences, carriage returns) replaced, and at most
/// `max` bytes, cut on a character boundary.
fn printable(line: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() && c != '\t' {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        };
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// The console log, rotated to `<path>.1` when it is full.
#[derive(Debug)]
struct Log {
    path: PathBuf,
    file: File,
    written: u64,
    cap: u64,
}

impl Log {
    fn create(path: &Path, cap: u64) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: File::create(path)?,
            written: 0,
            cap,
        })
    }

    /// Appends one line. Failures are ignored: a full disk must not stop
    /// the copy, or the guest would block on a full pipe.
    fn line(&mut self, line: &[u8], cut: bool) {
        if self.written >= self.cap {
            self.rotate();
        }
        let _ = self.file.write_all(line);
        if cut {
            let _ = self.file.write_all(CUT_MARKER.as_bytes());
        }
        let _ = self.file.write_all(b"\n");
        self.written += line.len() as u64 + 1 + if cut { CUT_MARKER.len() as u64 } else { 0 };
    }

    fn rotate(&mut self) {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let rotated = std::fs::rename(&self.path, &old)
            .and_then(|()| File::create(&self.path))
            .map(|file| self.file = file);
        if let Err(err) = rotated {
            // Keep the file bounded anyway: start it over in place.
            tracing::warn!(%err, log = %self.path.display(), "rotating the console log");
            let _ = self.file.set_len(0);
            let _ = std::io::Seek::rewind(&mut self.file);
        }
        self.written = 0;
    }
}

#[derive(Debug)]
pub struct Console {
    seen: Arc<Mutex<Seen>>,
    copier: Option<JoinHandle<()>>,
}

impl Console {
    /// Starts copying `output` (the VM's serial console) to `log`.
    pub fn start(
        output: impl Read + Send + 'static,
        log: &Path,
        started: Instant,
    ) -> std::io::Result<Self> {
        Self::start_with(output, log, started, Limits::default())
    }

    /// [`Self::start`] with other limits than the defaults.
    pub fn start_with(
        mut output: impl Read + Send + 'static,
        log: &Path,
        started: Instant,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let mut log = Log::create(log, limits.log_file)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        let copier = std::thread::Builder::new()
            .name("vm-console".into())
            .spawn(move || {
                let mut emit = |line: &[u8], cut: bool| {
                    log.line(line, cut);
                    let mut seen = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    seen.first_line.get_or_insert_with(|| started.elapsed());
                    seen.push(line, cut, &limits);
                };
                let mut buf = vec![0u8; 8192];
                let mut line: Vec<u8> = Vec::with_capacity(limits.line);
                loop {
                    let len = match output.read(&mut buf) {
                        Ok(0) => break,
                        Ok(len) => len,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    for &byte in &buf[..len] {
                        if byte == b'\n' {
                            emit(&line, false);
                            line.clear();
                            continue;
                        }
                        if line.len() == limits.line {
                            emit(&line, true);
                            line.clear();
                        }
                        line.push(byte);
                    }
                }
                if !line.is_empty() {
                    emit(&line, false);
                }
            })?;
        Ok(Self {
            seen,
            copier: Some(copier),
        })
    }

    pub fn first_line(&self) -> Option<Duration> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_line
    }

    /// The last console lines, oldest first: at most [`Limits::tail`]
    /// bytes of them, and printable.
    pub fn tail(&self) -> String {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits for the copy to finish; the VM process must have exited.
    pub fn finish(&mut self) {
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
    }
}

/// The last `max` bytes of a helper's log file, from a line start where
/// there is one, printable as console lines are: helpers such as virtiofsd
/// log what the guest makes them do, so their logs are bounded too.
pub fn log_tail(path: &Path, max: usize) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let from = len.saturating_sub(max as u64);
    if file.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity(max);
    let _ = file.take(max as u64).read_to_end(&mut bytes);
    let mut bytes = &bytes[..];
    if from > 0
        && let Some(newline) = bytes.iter().position(|&b| b == b'\n')
    {
        bytes = &bytes[newline + 1..];
    }
    bytes
        .split(|&b| b == b'\n')
        .map(|line| printable(line, max))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            line: 16,
            log_file: 64,
            tail: 40,
            tail_line: 12,
        }
    }

    fn copy(input: &[u8], limits: Limits) -> (tempfile::TempDir, Console) {
        let dir = tempfile::tempdir().expect("dir");
        let mut console = Console::start_with(
            std::io::Cursor::new(input.to_vec()),
            &dir.path().join("console.log"),
            Instant::now(),
            limits,
        )
        .expect("console");
        console.finish();
        (dir, console)
    }

    #[test]
    fn lines_without_a_newline_are_cut_into_bounded_pieces() {
        let (dir, console) = copy(&[b'x'; 40], limits());
        let log = std::fs::read_to_string(dir.path().join("console.log")).expect("log");
        let x16 = "x".repeat(16);
        assert_eq!(
            log,
            format!("{x16}{CUT_MARKER}\n{x16}{CUT_MARKER}\nxxxxxxxx\n")
        );
        assert!(console.first_line().is_some());
    }

    #[test]
    fn the_log_is_rotated_so_the_pod_keeps_at_most_two_files_of_the_cap() {
        let input: Vec<u8> = (0..100)
            .flat_map(|n| format!("line {n:03}\n").into_bytes())
            .collect();
        let (dir, _console) = copy(&input, limits());
        let log = std::fs::read_to_string(dir.path().join("console.log")).expect("log");
        let old = std::fs::read_to_string(dir.path().join("console.log.1")).expect("rotated");
        assert!(log.len() as u64 <= limits().log_file + 17, "{log:?}");
        assert!(old.len() as u64 <= limits().log_file + 17, "{old:?}");
        assert!(log.ends_with("line 099\n"), "{log:?}");
        let files = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(files, 2);
    }

    #[test]
    fn the_tail_is_bounded_in_bytes_and_printable() {
        let (_dir, console) = copy(
            b"first\nsecond\n\x1b[2Jclear\r\nabcdefghijklmnopqrstuvwxyz\nlast\n",
            limits(),
        );
        let tail = console.tail();
        assert!(tail.len() <= limits().tail, "{tail:?}");
        assert!(!tail.contains('\x1b'), "{tail:?}");
        assert!(tail.ends_with("\nlast"), "{tail:?}");
        assert!(!tail.contains("first"), "{tail:?}");
    }

    #[test]
    fn a_helper_log_tail_starts_at_a_line_and_is_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("virtiofsd.log");
        let text: String = (0..1000).map(|n| format!("helper line {n}\n")).collect();
        std::fs::write(&path, text).expect("write");
        let tail = log_tail(&path, 100);
        assert!(tail.len() <= 100, "{tail:?}");
        assert!(tail.starts_with("helper line "), "{tail:?}");
        assert!(tail.ends_with("helper line 999"), "{tail:?}");
        assert_eq!(log_tail(&dir.path().join("missing.log"), 100), "");
    }
}
