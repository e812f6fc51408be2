//! Tap devices: the VMM's end of each pod interface.
//!
//! A tap is opened with `IFF_VNET_HDR` so that every frame carries the
//! virtio-net header that both QEMU and hull-vmm expect, and without
//! `TUNSETPERSIST`: it exists only while a file descriptor for it is open,
//! so a VMM that dies takes its taps with it and nothing can leak.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetworkError;

const TUN_DEVICE: &str = "/dev/net/tun";

// From <linux/if_tun.h>.
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Creates the tap `name` in the calling thread's network namespace and
/// returns its file descriptor.
pub fn create(name: &str) -> Result<OwnedFd, NetworkError> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(TUN_DEVICE)
        .map_err(|source| NetworkError::Io {
            context: format!("opening {TUN_DEVICE}"),
            source,
        })?;
    let mut request = interface_request(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
    // SAFETY: the descriptor is an open /dev/net/tun, and TUNSETIFF reads
    // (and writes back) exactly one `ifreq`, which `request` is and which
    // outlives the call.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
    if result < 0 {
        return Err(NetworkError::Io {
            context: format!("creating the tap {name}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(file.into())
}

fn interface_request(name: &str, flags: libc::c_short) -> Result<libc::ifreq, NetworkError> {
    // SAFETY: ifreq is plain data (a name and a union of integers), for
    // which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= request.ifr_name.len() {
        return Err(NetworkError::Io {
            context: format!("the tap name {name:?}"),
            source: std::io::Error::other("must be 1 to 15 bytes"),
        });
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = flags;
    Ok(request)
}
