//! The vsock device's insides for the fuzz targets (`fuzz/`, cargo feature
//! `fuzzing`): the worker and muxer the device thread runs, turned on the
//! caller's thread so that one input is one deterministic run, with no
//! thread and no waiting.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use virtio_queue::Queue;
use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::VsockError;
use super::muxer::Muxer;
pub use super::packet::{HEADER_LEN, Header, MAX_PAYLOAD, Op, TYPE_STREAM};
use super::worker::Worker;
use crate::devices::virtio::Interrupt;
use crate::memory::GuestMemory;

/// A vsock device whose driver has set up rx and tx: what
/// [`super::Vsock`] starts on activation, without the thread.
pub struct Device {
    worker: Worker,
    events: Vec<EpollEvent>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Host clients arrive on `listener` (bound at `uds_path`); guest
    /// REQUESTs to port P connect to `<uds_path>_P`, as on a real VMM.
    pub fn new(
        guest_cid: u64,
        memory: GuestMemory,
        rx: Queue,
        tx: Queue,
        uds_path: PathBuf,
        listener: UnixListener,
    ) -> Result<Self, VsockError> {
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd)?);
        let muxer = Muxer::new(guest_cid, uds_path, listener)?;
        let worker = Worker::new(memory, rx, tx, interrupt, muxer)?;
        Ok(Self {
            worker,
            events: vec![EpollEvent::default(); 64],
        })
    }

    /// One turn of the device thread's loop, without waiting: host socket
    /// events that are ready, then both queues.
    pub fn turn(&mut self) {
        let _ = self.worker.turn(&mut self.events, 0);
    }
}
