//! Runs inside a test container, for what busybox has no applet for.
//! tests/tests/escapes.rs: opening a Unix or vsock socket; it tries each
//! target and prints `connected` (Unix), `answered`, `closed` or `silent`
//! (vsock, see [`vsock`]) or `refused: <error>`. tests/tests/cri_namespaces.rs:
//! creating a SysV shared memory segment, which another container of the
//! pod then sees in `/proc/sysvipc/shm` if it shares the IPC namespace.
//! Built by the harness (`hull_tests::probe`) with plain `rustc` (std only,
//! statically linked), so the busybox image needs nothing more.
//!
//!   probe selftest          (a socket of its own: shows that connecting works)
//!   probe unix PATH...
//!   probe vsock CID:PORT...
//!   probe shm KEY           (creates a 4 KiB segment with that decimal key)

use std::io::Error;
use std::os::unix::net::UnixStream;

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;

#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

const IPC_CREAT: i32 = 0o1000;

unsafe extern "C" {
    fn shmget(key: i32, size: usize, flags: i32) -> i32;
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn close(fd: i32) -> i32;
}

/// Connects to `cid:port`, then speaks HTTP/2 (the client preface and an
/// empty SETTINGS frame, as a gRPC client would) and waits up to 5 s for a
/// byte back: a server that serves answers with its SETTINGS, one that
/// drops the connection gives end-of-file. A listening socket accepts the
/// connection in the kernel either way, so connecting alone says nothing.
fn vsock(cid: u32, port: u32) -> Result<&'static str, Error> {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; the
    // address is a valid sockaddr_vm of the size passed.
    let fd = unsafe {
        let fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        let addr = SockaddrVm {
            family: AF_VSOCK as u16,
            reserved1: 0,
            port,
            cid,
            flags: 0,
            zero: [0; 3],
        };
        if connect(fd, &addr, std::mem::size_of::<SockaddrVm>() as u32) != 0 {
            let error = Error::last_os_error();
            close(fd);
            return Err(error);
        }
        fd
    };
    // SAFETY: `fd` is a connected stream socket that nothing else owns; a
    // UnixStream's read, write and timeouts are plain socket calls.
    let mut stream = unsafe { UnixStream::from_raw_fd(fd) };
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    if stream.write_all(&hello).is_err() {
        return Ok("closed");
    }
    let mut byte = [0u8; 1];
    Ok(match stream.read(&mut byte) {
        Ok(1..) => "answered",
        Ok(0) => "closed",
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => "silent",
        Err(_) => "closed",
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, targets)) = args.split_first() else {
        eprintln!("usage: probe unix PATH... | probe vsock CID:PORT...");
        std::process::exit(2);
    };
    if mode == "selftest" {
        let path = "/tmp/probe-selftest.sock";
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
        match UnixStream::connect(path) {
            Ok(_) => println!("selftest: connected"),
            Err(err) => println!("selftest: refused: {err}"),
        }
        drop(listener);
        return;
    }
    if mode == "shm" {
        let key: i32 = targets.first().and_then(|k| k.parse().ok()).expect("KEY");
        // SAFETY: shmget takes plain integers and touches no memory of ours.
        let id = unsafe { shmget(key, 4096, IPC_CREAT | 0o600) };
        if id < 0 {
            println!("shm {key}: refused: {}", Error::last_os_error());
            std::process::exit(1);
        }
        println!("shm {key}: created {id}");
        return;
    }
    for target in targets {
        let result = match mode.as_str() {
            "unix" => UnixStream::connect(target).map(|_| "connected"),
            "vsock" => {
                let (cid, port) = target.split_once(':').expect("CID:PORT");
                vsock(cid.parse().expect("cid"), port.parse().expect("port"))
            }
            _ => {
                eprintln!("unknown mode {mode}");
                std::process::exit(2);
            }
        };
        match result {
            Ok(outcome) => println!("{target}: {outcome}"),
            Err(err) => println!("{target}: refused: {err}"),
        }
    }
}
