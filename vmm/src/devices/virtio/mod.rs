//! virtio devices and their MMIO transport.

pub mod chain;
pub mod device_thread;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub mod test_driver;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// Every device offers virtio 1.0 (`VIRTIO_F_VERSION_1`): the MMIO transport
/// here is version 2, the modern one.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Reads `data` from a config space kept as its bytes, from `offset` on.
/// Past the end reads zeros: the driver may read a field the features it
/// accepted leave out, and must get something.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|offset| offset.checked_add(i))
            .and_then(|at| config.get(at).copied())
            .unwrap_or(0);
    }
}

/// The transport's interrupt: a status bit for the driver to read, and an
/// eventfd that raises the line (an irqfd once the VM has an irqchip).
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    eventfd: Arc<EventFd>,
}

impl Interrupt {
    /// "Used buffer notification" in the interrupt status register.
    pub const USED_RING: u32 = 1;
    /// "Configuration change notification".
    pub const CONFIG: u32 = 2;

    pub fn new(eventfd: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            eventfd: Arc::new(eventfd),
        }
    }

    pub fn signal(&self, reason: u32) {
        self.status.fetch_or(reason, Ordering::SeqCst);
        if let Err(err) = self.eventfd.write(1) {
            tracing::warn!(%err, "raising a virtio interrupt");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    pub memory: GuestMemory,
    /// The queues the driver set up, in device order.
    pub queues: Vec<Queue>,
    pub interrupt: Interrupt,
    /// The features the driver accepted (a subset of [`VirtioDevice::features`]).
    pub acked_features: u64,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1 for net, 4 for rng, 19 for vsock, 26 for fs).
    fn device_type(&self) -> u32;
    fn features(&self) -> u64;
    fn queue_max_sizes(&self) -> &[u16];
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver is ready: the device gets its queues.
    fn activate(&mut self, activation: Activation);
    /// The driver made buffers available on queue `index`.
    fn queue_notify(&mut self, index: u32);
    /// The driver reset the device: it gives its queues back.
    fn reset(&mut self);
}
