//! Hybrid vsock: the host reaches a guest port through a Unix socket by
//! writing `CONNECT <port>\n` and reading `OK <host-port>\n`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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
    fn refusal_is_an_error_naming_the_port() {
        let (_dir, path) = serve_once("");
        let err = connect(&path, 1024).expect_err("refused").to_string();
        assert!(err.starts_with("vsock port 1024: "), "{err}");
    }
}
