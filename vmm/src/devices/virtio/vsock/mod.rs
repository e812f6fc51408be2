//! virtio-vsock with a hybrid back end, as Firecracker does it: guest
//! stream sockets are bridged to Unix sockets on the host (see
//! [`crate::VsockConfig`]).
//!
//! The device listens on `uds_path` from construction, so host clients can
//! connect before the guest driver is up (they wait in the backlog). Once
//! the driver activates it, the work runs on its own thread ([`worker`]);
//! the vCPU thread only kicks it.

mod connection;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod muxer;
mod packet;
mod worker;

#[cfg(test)]
mod tests;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::devices::virtio::chain::ChainError;
use crate::devices::virtio::device_thread::DeviceThread;
use crate::devices::virtio::{Activation, VIRTIO_F_VERSION_1, VirtioDevice, read_config_bytes};
use muxer::Muxer;
use worker::Worker;

pub const VIRTIO_ID_VSOCK: u32 = 19;
/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;
const QUEUE_SIZE: u16 = 256;
const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock.uds_path {path}: {reason}")]
    UdsPath { path: PathBuf, reason: String },
    #[error("vsock.guest_cid: {0} is reserved (0, 1, 2 and 2^32-1 are)")]
    GuestCid(u64),
    #[error("vsock epoll: {0}")]
    Epoll(#[source] std::io::Error),
    #[error("vsock eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("starting the vsock thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("{0} bytes cannot hold a packet header")]
    HeaderTooShort(usize),
    #[error("a payload of {len} bytes where {available} are available")]
    LenBeyondBuffer { len: u32, available: usize },
}

/// The Unix listener, and which file it is, so that only that file is
/// removed when the device goes.
#[derive(Debug)]
struct Listener {
    socket: UnixListener,
    path: PathBuf,
    identity: (u64, u64),
}

impl Listener {
    fn bind(path: &Path) -> Result<Self, VsockError> {
        let fail = |reason: String| VsockError::UdsPath {
            path: path.to_owned(),
            reason,
        };
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            if !metadata.file_type().is_socket() {
                return Err(fail("exists and is not a socket".into()));
            }
            // A socket nobody listens on is left over from a VMM that died.
            if UnixStream::connect(path).is_ok() {
                return Err(fail("another process listens there".into()));
            }
            std::fs::remove_file(path)
                .map_err(|err| fail(format!("removing a stale socket: {err}")))?;
        }
        let socket = UnixListener::bind(path).map_err(|err| fail(err.to_string()))?;
        socket
            .set_nonblocking(true)
            .map_err(|err| fail(err.to_string()))?;
        let metadata = std::fs::symlink_metadata(path).map_err(|err| fail(err.to_string()))?;
        Ok(Self {
            socket,
            path: path.to_owned(),
            identity: (metadata.dev(), metadata.ino()),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.identity);
        if ours && let Err(err) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %err, "vsock: removing the socket");
        }
    }
}

#[derive(Debug)]
pub struct Vsock {
    guest_cid: u64,
    listener: Listener,
    worker: Option<DeviceThread>,
}

impl Vsock {
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::GuestCid(guest_cid));
        }
        Ok(Self {
            guest_cid,
            listener: Listener::bind(uds_path)?,
            worker: None,
        })
    }

    fn start(&self, activation: Activation) -> Result<DeviceThread, VsockError> {
        let mut queues = activation.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(VsockError::Thread(std::io::Error::other(
                "fewer than two queues",
            )));
        };
        let listener = self
            .listener
            .socket
            .try_clone()
            .map_err(|err| VsockError::UdsPath {
                path: self.listener.path.clone(),
                reason: err.to_string(),
            })?;
        let muxer = Muxer::new(self.guest_cid, self.listener.path.clone(), listener)?;
        Worker::new(activation.memory, rx, tx, activation.interrupt, muxer)?.spawn()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        // rx, tx, event. Nothing is ever posted on the event queue: its only
        // event is a transport reset after migration.
        &[QUEUE_SIZE; 3]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _: u64, _: &[u8]) {
        // guest_cid is read-only.
    }

    fn activate(&mut self, activation: Activation) {
        self.reset();
        match self.start(activation) {
            Ok(worker) => self.worker = Some(worker),
            Err(err) => tracing::error!(%err, "vsock: the device cannot start"),
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
