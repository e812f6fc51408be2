//! The shim's log: to containerd's `log` FIFO when serving, to stderr for
//! `start` and `delete`. The level is the config file's `log_level`, unless
//! `HULL_SHIM_LOG` (an env filter) overrides it.
//!
//! containerd reads a shim's log from the `log` FIFO in a task's bundle,
//! for as long as its connection for that task lasts. One shim serves every
//! task of a pod, so when the task whose FIFO it writes to is deleted first
//! (the sandbox, when a crash ends the whole pod at once), it moves on to
//! the FIFO of another task of the pod: see [`LogSink`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

const ENV: &str = "HULL_SHIM_LOG";
const FIFO: &str = "log";

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static SINK: OnceLock<Mutex<LogSink>> = OnceLock::new();

pub fn init(serving: bool) {
    let filter = EnvFilter::try_from_env(ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // At debug level every RPC's span closes with how long it took: what
    // to look at when containerd's calls time out.
    let format = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if serving {
        // The shim starts in its first task's bundle.
        let _ = SINK.set(Mutex::new(LogSink::new(Path::new("."))));
        registry.with(format.with_writer(|| SinkWriter)).try_init()
    } else {
        registry
            .with(format.with_writer(std::io::stderr))
            .try_init()
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Applies the configured level, unless the environment chose one.
pub fn set_level(level: &str) {
    if std::env::var_os(ENV).is_some() {
        return;
    }
    if let Some(handle) = FILTER.get()
        && let Err(err) = handle.reload(EnvFilter::new(level))
    {
        tracing::warn!(%err, level, "setting the log level");
    }
}

/// A task's bundle, whose log FIFO containerd now reads too.
pub fn add_bundle(bundle: &Path) {
    with_sink(|sink| sink.add(bundle));
}

/// A deleted task's bundle: containerd stops reading its FIFO.
pub fn remove_bundle(bundle: &Path) {
    with_sink(|sink| sink.remove(bundle));
}

/// The tracing writer: each event is one write of its whole line.
struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut written = Ok(line.len());
        with_sink(|sink| written = sink.write(line));
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn with_sink(change: impl FnOnce(&mut LogSink)) {
    if let Some(sink) = SINK.get() {
        change(&mut sink.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Writes to the log FIFO of one of the pod's live tasks: when containerd
/// closes the one in use (its task was deleted), the next write goes to
/// another task's FIFO that has a reader. With none left, lines are dropped
/// rather than blocking the shim.
#[derive(Debug)]
pub struct LogSink {
    current: Option<File>,
    /// Bundles in the order their tasks came.
    bundles: Vec<PathBuf>,
}

impl LogSink {
    pub fn new(first_bundle: &Path) -> Self {
        Self {
            current: None,
            bundles: vec![first_bundle.to_owned()],
        }
    }

    fn add(&mut self, bundle: &Path) {
        let same = |known: &PathBuf| same_dir(known, bundle);
        if !self.bundles.iter().any(same) {
            self.bundles.push(bundle.to_owned());
        }
    }

    fn remove(&mut self, bundle: &Path) {
        self.bundles.retain(|known| !same_dir(known, bundle));
    }

    /// Opens the first FIFO containerd still reads; `false` if none.
    fn reopen(&mut self) -> bool {
        self.current = self.bundles.iter().find_map(|bundle| open_if_read(bundle));
        self.current.is_some()
    }
}

impl Write for LogSink {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        // Each bundle once, and once more for the one that just closed.
        for _ in 0..=self.bundles.len() {
            if self.current.is_none() && !self.reopen() {
                break;
            }
            let Some(fifo) = self.current.as_mut() else {
                break;
            };
            match fifo.write(line) {
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe => self.current = None,
                written => return written,
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The write end of `bundle`'s log FIFO, if containerd has it open for
/// reading: without a reader, a non-blocking open fails (ENXIO) instead of
/// waiting. Writes then block as usual, so nothing is lost to a full pipe.
fn open_if_read(bundle: &Path) -> Option<File> {
    use std::os::fd::AsRawFd;

    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let fifo = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join(FIFO))
        .ok()?;
    fcntl(fifo.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).ok()?;
    Some(fifo)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || a.canonicalize()
            .is_ok_and(|a| b.canonicalize().is_ok_and(|b| a == b))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn fifo_in(dir: &Path, name: &str) -> PathBuf {
        let bundle = dir.join(name);
        std::fs::create_dir(&bundle).expect("bundle");
        nix::unistd::mkfifo(&bundle.join(FIFO), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        bundle
    }

    /// containerd's side: a non-blocking reader of a bundle's FIFO.
    fn reader(bundle: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(bundle.join(FIFO))
            .expect("reader")
    }

    fn read_all(reader: &mut File) -> String {
        let mut text = String::new();
        let mut chunk = [0u8; 256];
        while let Ok(read) = reader.read(&mut chunk) {
            if read == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&chunk[..read]));
        }
        text
    }

    #[test]
    fn the_log_moves_to_a_live_task_when_containerd_closes_the_fifo_in_use() {
        let dir = tempfile::tempdir().expect("dir");
        let sandbox = fifo_in(dir.path(), "sandbox");
        let container = fifo_in(dir.path(), "container");
        let mut sandbox_reader = reader(&sandbox);
        let mut sink = LogSink::new(&sandbox);
        sink.add(&container);
        let mut container_reader = reader(&container);

        sink.write_all(b"one\n").expect("write");
        assert_eq!(read_all(&mut sandbox_reader), "one\n");
        assert_eq!(read_all(&mut container_reader), "");

        // The sandbox task is deleted: containerd closes its reader.
        drop(sandbox_reader);
        sink.remove(&sandbox);
        sink.write_all(b"two\n").expect("write");
        assert_eq!(read_all(&mut container_reader), "two\n");
    }

    #[test]
    fn with_no_reader_left_lines_are_dropped_without_blocking() {
        let dir = tempfile::tempdir().expect("dir");
        let only = fifo_in(dir.path(), "only");
        let mut sink = LogSink::new(&only);
        sink.write_all(b"nobody reads this\n").expect("dropped");
        let first = reader(&only);
        sink.write_all(b"read\n").expect("write");
        drop(first);
        // The one reader went, and the bundle is still listed.
        sink.write_all(b"dropped\n").expect("dropped");
        let mut again = reader(&only);
        sink.write_all(b"back\n").expect("write");
        assert_eq!(read_all(&mut again), "back\n");
    }
}
