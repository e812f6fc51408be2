//! The guest's side of a test: the shared virtqueue driver
//! ([`test_driver`]), sending and receiving frames.

use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, OwnedFd};

use vm_memory::{Bytes, GuestAddress};

use super::super::frame::HEADER_LEN;
use super::super::{Net, NetConfig};
use super::host::{MAC, MTU, create_tap, is_ours};
use crate::devices::virtio::test_driver;

/// The shared virtqueue driver, with net's frames.
#[derive(Debug)]
pub(super) struct Driver(test_driver::Driver);

// The tests reach the transport, memory and rings as if they were the
// driver's own.
impl Deref for Driver {
    type Target = test_driver::Driver;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Driver {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Driver {
    /// The device on a fresh tap, not yet activated; also the caller's copy
    /// of the tap fd.
    pub(super) fn new(index: usize) -> (Self, OwnedFd) {
        let tap = create_tap(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        let device = Net::new(
            index,
            &NetConfig {
                tap_fd: tap.as_raw_fd(),
                mac: MAC,
                mtu: MTU,
            },
        )
        .expect("net");
        let driver = Self(test_driver::Driver::new(Box::new(device), 2));
        (driver, tap)
    }

    pub(super) fn ready(index: usize) -> Self {
        let (mut driver, _tap) = Self::new(index);
        driver.activate();
        for _ in 0..4 {
            driver.post_rx(&[4096]);
        }
        driver
    }

    /// Puts `header` and `frame` on tx, split into descriptors of these
    /// lengths (the last one takes the rest).
    pub(super) fn send(&mut self, header: [u8; HEADER_LEN], frame: &[u8], lens: &[usize]) -> u16 {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(frame);
        let mut parts = Vec::new();
        let mut rest = &bytes[..];
        for (i, &len) in lens.iter().enumerate() {
            let take = if i + 1 == lens.len() { rest.len() } else { len };
            let addr = self.next_tx_buffer(i as u16);
            self.memory
                .write_slice(&rest[..take], GuestAddress(addr))
                .expect("frame");
            parts.push((addr, take as u32, false));
            rest = &rest[take..];
        }
        self.offer(1, &parts)
    }

    /// The frame in the next used rx buffer, its header checked.
    pub(super) fn recv_one(&mut self) -> Vec<u8> {
        let (head, len) = self.used(0);
        assert!(len as usize > HEADER_LEN, "a {len}-byte rx buffer");
        let bytes = self.read_chain(head, len);
        assert_eq!(
            bytes[..HEADER_LEN],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "the rx header: no flags, num_buffers 1"
        );
        bytes[HEADER_LEN..].to_vec()
    }

    /// The next frame of [`ETHERTYPE`] the guest received, each buffer
    /// reposted; anything else the kernel might send is skipped.
    pub(super) fn recv(&mut self) -> Vec<u8> {
        loop {
            let frame = self.recv_one();
            self.post_rx(&[4096]);
            if is_ours(&frame) {
                return frame;
            }
        }
    }
}
