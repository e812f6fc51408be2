//! Hybrid vsock: the host reaches a guest port through a Unix socket by
//! writing `CONNECT <port>\n` and reading `OK <host-port>\n`.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_vmm::caps::RunAs;

use crate::VmError;

/// The handshake must not wait forever on a VM that hangs.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REPLY: usize = 64;

/// Connects to guest `port` through the hybrid vsock socket at `uds`.
pub fn connect(uds: &Path, port: u32) -> Result<UnixStream, VmError> {
    let fail = |reason: String| VmError::Vsock { port, reason };
    let mut stream = UnixStream::connect(uds)
        .map_err(|err| fail(format!("connecting to {}: {err}", uds.display())))?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|err| fail(err.to_string()))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|err| fail(format!("sending CONNECT: {err}")))?;
    // Byte by byte: whatever follows the reply belongs to the caller.
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.len() < MAX_REPLY {
        match stream.read(&mut byte) {
            Ok(0) => return Err(fail("the guest refused the connection".into())),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => reply.push(byte[0]),
            Err(err) => return Err(fail(format!("reading the CONNECT reply: {err}"))),
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    if !reply.starts_with("OK ") {
        return Err(fail(format!("unexpected CONNECT reply {reply:?}")));
    }
    stream
        .set_read_timeout(None)
        .map_err(|err| fail(err.to_string()))?;
    Ok(stream)
}

/// The guest's word that it is up: a connection it opens to a host port,
/// which both VMMs hand to the Unix socket `<uds>_<port>`.
///
/// The host connects to the guest only after it: vhost-device-vsock 0.3's
/// worker thread ends for good (the socket still accepts into its backlog,
/// so every later `CONNECT` goes unanswered) when a host connection arrives
/// after QEMU gave it the guest's memory but before the vrings are ready.
/// Polling with `CONNECT` from the start of the boot hit that window in
/// about one boot in 30 under TCG. A guest that dials out has its vsock
/// device running.
/// The host's side of a VM's hybrid vsock: the socket to connect through
/// and, until the guest called, the ready signal.
#[derive(Debug)]
pub(crate) struct HostVsock {
    pub(crate) uds: PathBuf,
    pub(crate) ready: Option<ReadySignal>,
}

impl HostVsock {
    /// Before the VMM starts, which serves `uds`.
    pub(crate) fn listen(uds: PathBuf, ready_port: u32) -> Result<Self, VmError> {
        let ready = ReadySignal::bind(&uds, ready_port)?;
        Ok(Self {
            uds,
            ready: Some(ready),
        })
    }

    /// Lets the process serving `uds`, running as `owner`, connect to the
    /// ready socket (connecting to a Unix socket takes write permission on
    /// it): the socket becomes `owner`'s.
    pub(crate) fn give_ready_socket_to(&self, owner: RunAs) -> Result<(), VmError> {
        let Some(ready) = &self.ready else {
            return Ok(());
        };
        std::os::unix::fs::chown(&ready.path, Some(owner.uid), Some(owner.gid)).map_err(|err| {
            VmError::Vsock {
                port: ready.port,
                reason: format!(
                    "giving {} to {}:{}: {err}",
                    ready.path.display(),
                    owner.uid,
                    owner.gid
                ),
            }
        })
    }
}

#[derive(Debug)]
pub(crate) struct ReadySignal {
    listener: UnixListener,
    path: PathBuf,
    port: u32,
}

impl ReadySignal {
    /// Listens before the VMM starts, so that the guest's call finds it.
    pub(crate) fn bind(uds: &Path, port: u32) -> Result<Self, VmError> {
        let mut path = uds.as_os_str().to_owned();
        path.push(format!("_{port}"));
        let path = PathBuf::from(path);
        let fail = |what: &str, err: std::io::Error| VmError::Vsock {
            port,
            reason: format!("{what} {}: {err}", path.display()),
        };
        let listener = UnixListener::bind(&path).map_err(|err| fail("listening on", err))?;
        listener
            .set_nonblocking(true)
            .map_err(|err| fail("setting up", err))?;
        Ok(Self {
            listener,
            path,
            port,
        })
    }

    /// Waits up to `wait` for the guest's call; true once it came.
    pub(crate) fn wait(&self, wait: Duration) -> Result<bool, VmError> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => {
                return Err(VmError::Vsock {
                    port: self.port,
                    reason: format!("waiting on {}: {err}", self.path.display()),
                });
            }
        }
        match self.listener.accept() {
            // Nothing is said on it: that it came is the message.
            Ok(_) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(err) => Err(VmError::Vsock {
                port: self.port,
                reason: format!("accepting on {}: {err}", self.path.display()),
            }),
        }
    }
}

impl Drop for ReadySignal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn serve_once(reply: &'static str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            assert_eq!(line, "CONNECT 1024\n");
            (&stream).write_all(reply.as_bytes()).expect("reply");
        });
        (dir, path)
    }

    #[test]
    fn handshake_then_payload() {
        let (_dir, path) = serve_once("OK 1073741824\npayload");
        let mut stream = connect(&path, 1024).expect("connect");
        let mut rest = String::new();
        stream.read_to_string(&mut rest).expect("payload");
        assert_eq!(rest, "payload");
    }

    #[test]
    fn the_ready_signal_is_a_connection_to_the_port_socket() {
        let dir = tempfile::tempdir().expect("dir");
        let uds = dir.path().join("v.uds");
        let ready = ReadySignal::bind(&uds, 1025).expect("bind");
        assert!(!ready.wait(Duration::from_millis(20)).expect("wait"));
        let _guest = UnixStream::connect(dir.path().join("v.uds_1025")).expect("connect");
        assert!(ready.wait(Duration::from_secs(5)).expect("wait"));
        drop(ready);
        assert!(!dir.path().join("v.uds_1025").exists(), "the socket stays");
    }

    #[test]
    fn refusal_is_an_error_naming_the_port() {
        let (_dir, path) = serve_once("");
        let err = connect(&path, 1024).expect_err("refused").to_string();
        assert!(err.starts_with("vsock port 1024: "), "{err}");
    }
}
