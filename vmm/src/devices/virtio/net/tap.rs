//! The tap back end: checking the fd the caller handed in, putting it in the
//! mode the device needs, and one frame per read or write.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::frame::HEADER_LEN;

/// The flags the tap must have been created with (`TUNSETIFF`).
const REQUIRED_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

#[derive(Debug)]
pub struct Tap {
    file: File,
    /// The interface's name, for the log.
    name: String,
}

impl Tap {
    /// Duplicates `fd`, checks it is a tap with [`REQUIRED_FLAGS`], makes its
    /// virtio-net header the 12-byte `virtio_net_hdr_v1`, turns every offload
    /// off and makes it non-blocking. The error says what is wrong, for the
    /// caller to put after the field's name.
    pub fn open(fd: RawFd) -> Result<Self, String> {
        let fd = duplicate(fd)?;
        let (name, mut flags) = get_iff(&fd)?;
        // TUNGETIFF reports IFF_NOFILTER, the same bit as IFF_NO_PI, for a
        // queue without a socket filter; with a pass-all filter attached
        // for the moment, the bit is IFF_NO_PI alone.
        if flags & libc::IFF_TAP != 0 && flags & libc::IFF_NO_PI != 0 {
            flags = flags_under_a_filter(&fd, &name)?;
        }
        if flags & libc::IFF_TUN != 0 || flags & REQUIRED_FLAGS != REQUIRED_FLAGS {
            return Err(format!(
                "{name} has flags {flags:#x}; a tap needs IFF_TAP|IFF_NO_PI|IFF_VNET_HDR ({REQUIRED_FLAGS:#x})"
            ));
        }
        let header_len = HEADER_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) } < 0 {
            let err = std::io::Error::last_os_error();
            return Err(format!("{name}: TUNSETVNETHDRSZ {HEADER_LEN}: {err}"));
        }
        // No checksum or segmentation offload is offered to the guest, so
        // the tap must never hand over a partial checksum or a GSO frame.
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            let err = std::io::Error::last_os_error();
            return Err(format!("{name}: TUNSETOFFLOAD 0: {err}"));
        }
        let status = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)
            .map_err(|errno| format!("{name}: F_GETFL: {errno}"))?;
        let status = OFlag::from_bits_truncate(status) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(status))
            .map_err(|errno| format!("{name}: setting O_NONBLOCK: {errno}"))?;
        Ok(Self {
            file: File::from(fd),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// One frame, behind its virtio-net header. `WouldBlock` when the tap
    /// has nothing.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// One frame, behind its virtio-net header, in one write(2): a tap
    /// takes a write as exactly one frame.
    pub fn write(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }
}

/// The interface's name and flags (TUNGETIFF).
fn get_iff(fd: &OwnedFd) -> Result<(String, libc::c_int), String> {
    let mut request = ifreq();
    // SAFETY: TUNGETIFF writes at most one `struct ifreq`, which `request`
    // is; on an fd that is not a tun device it fails instead.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut request) } < 0 {
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EBADFD) => "a tun fd not attached to any interface".into(),
            Some(libc::ENOTTY | libc::EINVAL) => "not a tap (TUNGETIFF refused it)".into(),
            _ => format!("TUNGETIFF: {err}"),
        });
    }
    // SAFETY: TUNGETIFF succeeded, so it filled in the flags member.
    let flags = libc::c_int::from(unsafe { request.ifr_ifru.ifru_flags });
    Ok((interface_name(&request), flags))
}

/// The tap's flags read while a filter that passes every frame whole is
/// attached (TUNATTACHFILTER), then detached again. This happens before the
/// guest runs, and the filter changes no frame.
fn flags_under_a_filter(fd: &OwnedFd, name: &str) -> Result<libc::c_int, String> {
    let mut accept_all = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: u32::MAX,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: accept_all.as_mut_ptr(),
    };
    // SAFETY: TUNATTACHFILTER copies the `sock_fprog` and its one
    // instruction, both alive for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNATTACHFILTER, &program) } < 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "{name}: TUNATTACHFILTER (to read IFF_NO_PI): {err}"
        ));
    }
    let flags = get_iff(fd);
    // SAFETY: TUNDETACHFILTER's argument is not read on a tap.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNDETACHFILTER, &program) } < 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!("{name}: TUNDETACHFILTER: {err}"));
    }
    Ok(flags?.1)
}

fn duplicate(fd: RawFd) -> Result<OwnedFd, String> {
    let copy = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(0)).map_err(|errno| match errno {
        nix::errno::Errno::EBADF => "not an open file descriptor".to_string(),
        errno => format!("duplicating it: {errno}"),
    })?;
    // SAFETY: F_DUPFD_CLOEXEC just made `copy`, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

pub(super) fn ifreq() -> libc::ifreq {
    // SAFETY: `ifreq` is plain C data (a name and a union of integers and
    // addresses), for which all zeros is valid.
    unsafe { std::mem::zeroed() }
}

fn interface_name(request: &libc::ifreq) -> String {
    let bytes: Vec<u8> = request
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
