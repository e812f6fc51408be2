//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2).

use virtio_queue::{Queue, QueueState, QueueT};

use super::{Activation, Interrupt, VirtioDevice};
use crate::devices::BusDevice;
use crate::memory::GuestMemory;

/// The size of one device's register window.
pub const MMIO_LEN: u64 = 0x1000;
const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4c55_4c48; // "HULL"
const CONFIG_SPACE: u64 = 0x100;

mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const FAILED: u32 = 0x80;
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemory,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    /// What the driver configured, kept for register reads once the device
    /// owns the queues.
    activated_queues: Vec<QueueState>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, memory: GuestMemory, interrupt: Interrupt) -> Self {
        let queues = Self::fresh_queues(device.as_ref());
        Self {
            device,
            memory,
            interrupt,
            queues,
            activated_queues: Vec::new(),
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            activated: false,
            config_generation: 0,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues are set up before DRIVER_OK and frozen after.
        if self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let select = self.queue_select as usize;
        let (max_size, ready) = match (self.queues.get(select), self.activated_queues.get(select)) {
            (Some(queue), _) => (queue.max_size(), queue.ready()),
            (None, Some(state)) => (state.max_size, state.ready),
            (None, None) => (0, false),
        };
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR,
            0x010 => match self.device_features_select {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x034 => u32::from(max_size),
            0x044 => u32::from(ready),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x014 => self.device_features_select = value,
            0x020 => {
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                // A driver can only accept what the device offers.
                let offered = (self.device.features() >> shift) as u32;
                self.driver_features |= u64::from(value & offered) << shift;
            }
            0x024 => self.driver_features_select = value,
            0x030 => self.queue_select = value,
            0x038 => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_size(value as u16);
                }
            }
            0x044 => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(value == 1);
                }
            }
            0x050 => {
                if self.activated {
                    self.device.queue_notify(value);
                }
            }
            0x064 => self.interrupt.acknowledge(value),
            0x070 => self.set_status(value),
            0x080 => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            0x084 => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            0x090 => self.with_queue(|q| q.set_avail_ring_address(Some(value), None)),
            0x094 => self.with_queue(|q| q.set_avail_ring_address(None, Some(value))),
            0x0a0 => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            0x0a4 => self.with_queue(|q| q.set_used_ring_address(None, Some(value))),
            _ => tracing::debug!(
                offset,
                "write to a read-only or unknown virtio-mmio register"
            ),
        }
    }

    fn with_queue(&mut self, change: impl FnOnce(&mut Queue)) {
        if let Some(queue) = self.selected_queue() {
            change(queue);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        self.status = value;
        let ready = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        if !self.activated && value & ready == ready && value & status::FAILED == 0 {
            if self
                .queues
                .iter()
                .all(|q| !q.ready() || q.is_valid(&self.memory))
            {
                self.activated = true;
                let queues = std::mem::take(&mut self.queues);
                self.activated_queues = queues.iter().map(Queue::state).collect();
                self.device.activate(Activation {
                    memory: self.memory.clone(),
                    queues,
                    interrupt: self.interrupt.clone(),
                    acked_features: self.driver_features,
                });
            } else {
                // The driver set up a queue outside guest memory: refuse it
                // the way the spec says, by flagging the device.
                self.status |= 0x40; // DEVICE_NEEDS_RESET
                self.interrupt.signal(Interrupt::CONFIG);
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.activated_queues.clear();
        self.interrupt.acknowledge(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
        } else if let (Ok(bytes), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}
