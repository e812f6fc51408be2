//! The host's side of a test: a private network namespace, a tap in it,
//! and a packet socket on the tap.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::super::tap;

/// IEEE 802 "local experimental": nothing else on the tap uses it.
pub(super) const ETHERTYPE: u16 = 0x88b5;
pub(super) const TAP_NAME: &str = "hulltap0";
pub(super) const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub(super) const BROADCAST: [u8; 6] = [0xff; 6];
pub(super) const MTU: u16 = 1500;

pub(super) fn check(what: &str, result: libc::c_int) -> libc::c_int {
    assert!(result >= 0, "{what}: {}", std::io::Error::last_os_error());
    result
}

/// Runs `body` on a thread in a network namespace of its own.
pub(super) fn in_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        // Without IPv6 the kernel sends nothing of its own on the tap, so
        // a test knows when the tap is empty. /proc/sys/net is the opening
        // thread's namespace's.
        std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
            .expect("disabling IPv6");
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

pub(super) fn named_ifreq() -> libc::ifreq {
    let mut request = tap::ifreq();
    for (slot, byte) in request.ifr_name.iter_mut().zip(TAP_NAME.bytes()) {
        *slot = byte as libc::c_char;
    }
    request
}

/// Creates [`TAP_NAME`] with these TUNSETIFF flags and brings it up.
pub(super) fn create_tap(flags: libc::c_int) -> OwnedFd {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    let mut request = named_ifreq();
    request.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which this is.
    check("TUNSETIFF", unsafe {
        libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request)
    });
    // SAFETY: a plain socket(2) call; the fd is owned right after.
    let control = unsafe {
        OwnedFd::from_raw_fd(check(
            "socket",
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0),
        ))
    };
    let mut request = named_ifreq();
    // SAFETY: SIOCGIFFLAGS fills in one `struct ifreq`.
    check("SIOCGIFFLAGS", unsafe {
        libc::ioctl(control.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request)
    });
    // SAFETY: SIOCGIFFLAGS set the flags member.
    let up = unsafe { request.ifr_ifru.ifru_flags } | libc::IFF_UP as libc::c_short;
    request.ifr_ifru.ifru_flags = up;
    // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`.
    check("SIOCSIFFLAGS", unsafe {
        libc::ioctl(control.as_raw_fd(), libc::SIOCSIFFLAGS, &request)
    });
    file.into()
}

/// The host's end of the tap: an AF_PACKET socket bound to it, seeing and
/// sending frames of [`ETHERTYPE`] only.
pub(super) struct Wire(OwnedFd);

impl Wire {
    pub(super) fn open() -> Self {
        let protocol = ETHERTYPE.to_be();
        // SAFETY: a plain socket(2) call; the fd is owned right after.
        let fd = unsafe {
            OwnedFd::from_raw_fd(check(
                "socket(AF_PACKET)",
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::c_int::from(protocol),
                ),
            ))
        };
        let name = std::ffi::CString::new(TAP_NAME).expect("name");
        // SAFETY: a NUL-terminated name, read only.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no {TAP_NAME}");
        // SAFETY: all zeros is a valid `sockaddr_ll`.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as libc::c_int;
        // SAFETY: bind reads `size_of::<sockaddr_ll>()` bytes of `address`.
        check("bind", unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        });
        Self(fd)
    }

    pub(super) fn send(&self, frame: &[u8]) {
        // SAFETY: send reads `frame.len()` bytes of `frame`.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            sent,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame out of the tap, or `None` after `timeout`.
    pub(super) fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut poll = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one `pollfd`.
        let ready = check("poll", unsafe {
            libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int)
        });
        if ready == 0 {
            return None;
        }
        let mut buf = vec![0u8; 70_000];
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let len = check("recv", unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            ) as libc::c_int
        });
        buf.truncate(len as usize);
        Some(buf)
    }
}

/// A frame of [`ETHERTYPE`] whose payload starts with `tag`.
pub(super) fn frame(destination: [u8; 6], source: [u8; 6], tag: &[u8], len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(tag);
    frame.extend(
        (0..)
            .map(|i: u32| (i % 251) as u8)
            .take(len.saturating_sub(frame.len())),
    );
    frame
}

pub(super) fn is_ours(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&ETHERTYPE.to_be_bytes()[..])
}
