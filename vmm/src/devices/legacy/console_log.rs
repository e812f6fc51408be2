//! Where the serial console's bytes go: the console log, kept to a bounded
//! size when it is a regular file, since the guest writes as much as it
//! likes and the file sits on the host's disk (often a tmpfs).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

/// The most bytes a console log file holds, unless the VMM's config
/// says otherwise.
pub const CONSOLE_LOG_CAP: u64 = 1024 * 1024;
/// Written at the start of the file each time it wraps: what follows it is
/// the newest output, and the bytes after the newest are older.
pub const WRAP_MARKER: &[u8] = b"[console log wrapped: newest output first]\n";

/// A console log file, written as a ring of [`CONSOLE_LOG_CAP`] bytes
/// when it is a regular file; a pipe or terminal is written as it is,
/// since whoever reads it bounds it.
#[derive(Debug)]
pub struct ConsoleLog {
    file: File,
    /// The file's cap, for a regular file.
    cap: Option<u64>,
    /// The write position in the ring.
    at: u64,
}

impl ConsoleLog {
    /// A log wrapping at `cap` bytes (at least the marker's length plus
    /// one) if `file` is a regular file.
    pub fn with_cap(file: File, cap: u64) -> std::io::Result<Self> {
        let regular = file.metadata()?.is_file();
        let cap = cap.max(WRAP_MARKER.len() as u64 + 1);
        Ok(Self {
            file,
            cap: regular.then_some(cap),
            at: 0,
        })
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(cap) = self.cap else {
            return self.file.write(buf);
        };
        if self.at >= cap {
            // Only lseek and write: the VMM's seccomp filter allows no
            // truncate or rename.
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(WRAP_MARKER)?;
            self.at = WRAP_MARKER.len() as u64;
        }
        let room = usize::try_from(cap - self.at).unwrap_or(usize::MAX);
        let written = self.file.write(&buf[..buf.len().min(room)])?;
        self.at += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_wraps_at_its_cap_and_says_so() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("console.log");
        let cap = WRAP_MARKER.len() as u64 + 10;
        let mut log = ConsoleLog::with_cap(File::create(&path).expect("create"), cap).expect("log");
        for _ in 0..1000 {
            log.write_all(b"0123456789abcdef\n").expect("write");
        }
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len() as u64, cap);
        assert!(bytes.starts_with(WRAP_MARKER), "{bytes:?}");
    }

    #[test]
    fn a_pipe_is_written_as_it_is() {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let mut log = ConsoleLog::with_cap(file, 1).expect("log");
        log.write_all(&[b'x'; 300]).expect("write");
        drop(log);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut { reader }, &mut out).expect("read");
        assert_eq!(out.len(), 300);
    }
}
