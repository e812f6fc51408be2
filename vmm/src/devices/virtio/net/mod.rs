//! virtio-net on a tap (see [`NetConfig`]): queue 0 receives, queue 1
//! transmits. No offload is offered (no checksum, no GSO, no mergeable rx
//! buffers), so every frame is a plain Ethernet frame behind a 12-byte
//! `virtio_net_hdr_v1`, one frame per descriptor chain.
//!
//! # The tap contract
//!
//! The caller (the shim, inside the pod's network namespace) opens
//! /dev/net/tun, creates or attaches the tap with `TUNSETIFF` and the flags
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (`IFF_MULTI_QUEUE` may be added),
//! and hands the fd to hull-vmm (`--net fd=N,...`, inherited across exec).
//! The tap must carry no socket filter of its own (`TUNATTACHFILTER`):
//! `TUNGETIFF` reports `IFF_NO_PI` in the same bit as "no filter", so the
//! device attaches a pass-all filter for a moment to read the flag.
//! At construction the device duplicates the fd, checks those flags with
//! `TUNGETIFF`, sets the tap's header size to 12 (`TUNSETVNETHDRSZ`), turns
//! every offload off (`TUNSETOFFLOAD 0`) and makes the file non-blocking. A
//! frame then maps one to one between a tap read or write and a chain. The
//! caller's copy of the fd shares the file description: it becomes
//! non-blocking too, and should not be read, or it takes frames from the
//! guest.
//!
//! The device works on its own thread ([`worker`]); the vCPU thread only
//! kicks it. Malformed chains (wrong direction, outside guest memory, too
//! short for the header, a frame over [`frame::MAX_FRAME`] bytes, an rx
//! buffer that cannot hold a frame of the MTU) go back used with length 0,
//! logged at a limited rate, and the device carries on. A frame from the
//! tap that does not fit the guest's buffer anyway is dropped.

mod config;
mod frame;
mod tap;
mod worker;

#[cfg(test)]
mod tests;

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

pub use config::{Mac, NetConfig, NetSpecError};
use tap::Tap;
use worker::Worker;

use crate::devices::virtio::chain::ChainError;
use crate::devices::virtio::device_thread::DeviceThread;
use crate::devices::virtio::{Activation, VIRTIO_F_VERSION_1, VirtioDevice, read_config_bytes};

pub const VIRTIO_ID_NET: u32 = 1;
const QUEUE_SIZE: u16 = 256;
const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
/// The least MTU Linux accepts on an Ethernet device (what IPv4 needs).
pub const MIN_MTU: u16 = 68;
/// `struct virtio_net_config` up to `mtu`: mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

const FEATURES: u64 =
    VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_MTU | 1 << VIRTIO_NET_F_STATUS;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("net[{index}].mac: {mac} {reason}")]
    Mac {
        index: usize,
        mac: Mac,
        reason: &'static str,
    },
    #[error("net[{index}].mtu: {mtu} is below {MIN_MTU}")]
    Mtu { index: usize, mtu: u16 },
    #[error("net[{index}].tap_fd {fd}: {reason}")]
    TapFd {
        index: usize,
        fd: RawFd,
        reason: String,
    },
    #[error("net epoll: {0}")]
    Epoll(#[source] std::io::Error),
    #[error("net eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("starting the net thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the driver did not accept VIRTIO_F_VERSION_1")]
    Legacy,
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("{0} bytes cannot hold the 12-byte virtio-net header")]
    HeaderTooShort(usize),
    #[error("an rx buffer of {len} bytes where a frame of the MTU needs {need}")]
    RxBufferTooSmall { len: usize, need: usize },
    #[error("a {0}-byte frame is shorter than an Ethernet header")]
    FrameTooShort(usize),
    #[error("a {0}-byte frame is over the {max}-byte limit", max = frame::MAX_FRAME)]
    FrameTooLong(usize),
}

#[derive(Debug)]
pub struct Net {
    index: usize,
    tap: Arc<Tap>,
    config: [u8; CONFIG_LEN],
    worker: Option<DeviceThread>,
}

impl Net {
    /// The device for `net[index]`: checks the MAC and MTU and takes the
    /// tap (see the module documentation for what it must be).
    pub fn new(index: usize, config: &NetConfig) -> Result<Self, NetError> {
        let mac = Mac(config.mac);
        if config.mac[0] & 1 != 0 {
            return Err(NetError::Mac {
                index,
                mac,
                reason: "is a multicast address",
            });
        }
        if config.mac == [0; 6] {
            return Err(NetError::Mac {
                index,
                mac,
                reason: "is all zeros",
            });
        }
        if config.mtu < MIN_MTU {
            return Err(NetError::Mtu {
                index,
                mtu: config.mtu,
            });
        }
        let tap = Tap::open(config.tap_fd).map_err(|reason| NetError::TapFd {
            index,
            fd: config.tap_fd,
            reason,
        })?;
        let mut space = [0u8; CONFIG_LEN];
        space[0..6].copy_from_slice(&config.mac);
        space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        // max_virtqueue_pairs: one rx/tx pair (VIRTIO_NET_F_MQ is not offered).
        space[8..10].copy_from_slice(&1u16.to_le_bytes());
        space[10..12].copy_from_slice(&config.mtu.to_le_bytes());
        Ok(Self {
            index,
            tap: Arc::new(tap),
            config: space,
            worker: None,
        })
    }

    fn start(&self, activation: Activation) -> Result<DeviceThread, NetError> {
        if activation.acked_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(NetError::Legacy);
        }
        // Without VIRTIO_NET_F_MTU the driver sizes its buffers for 1500.
        let mtu = if activation.acked_features & 1 << VIRTIO_NET_F_MTU != 0 {
            u16::from_le_bytes([self.config[10], self.config[11]])
        } else {
            1500
        };
        let min_rx_buffer = frame::HEADER_LEN + frame::MIN_FRAME + usize::from(mtu);
        let mut queues = activation.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(NetError::Thread(std::io::Error::other(
                "fewer than two queues",
            )));
        };
        Worker::new(
            activation.memory,
            rx,
            tx,
            activation.interrupt,
            Arc::clone(&self.tap),
            min_rx_buffer,
        )?
        .spawn(format!("hull-net{}", self.index))
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        // rx, tx; no control queue (VIRTIO_NET_F_CTRL_VQ is not offered).
        &[QUEUE_SIZE; 2]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _: u64, _: &[u8]) {
        // A modern driver writes no net config field; the MAC changes only
        // through a control queue, which is not offered.
    }

    fn activate(&mut self, activation: Activation) {
        self.reset();
        match self.start(activation) {
            Ok(worker) => self.worker = Some(worker),
            Err(err) => {
                tracing::error!(index = self.index, tap = self.tap.name(), %err, "net: the device cannot start");
            }
        }
    }

    fn queue_notify(&mut self, index: u32) {
        if let Some(worker) = &self.worker
            && (index == RX_QUEUE || index == TX_QUEUE)
        {
            worker.kick();
        }
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}
