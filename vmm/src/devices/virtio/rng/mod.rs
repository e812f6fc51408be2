//! virtio-rng: fills the driver's buffers from the host's /dev/urandom.

use std::fs::File;
use std::io::Read;

use virtio_queue::{Queue, QueueT};

use crate::devices::bus::RateLimit;
use crate::devices::virtio::chain::Segments;
use crate::devices::virtio::{Activation, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::memory::GuestMemory;

pub const VIRTIO_ID_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 256;
/// At most this much entropy per buffer, so one request cannot make the
/// vCPU thread read without end.
const MAX_BYTES_PER_BUFFER: u32 = 64 * 1024;

#[derive(Debug)]
pub struct Rng {
    source: File,
    active: Option<(GuestMemory, Queue, Interrupt)>,
    bad_input: RateLimit,
}

impl Rng {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            source: File::open("/dev/urandom")?,
            active: None,
            bad_input: RateLimit::default(),
        })
    }

    fn fill_buffers(&mut self) {
        let Some((memory, queue, interrupt)) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(&*memory) {
            let head = chain.head_index();
            // The device's own walk: device-writable buffers inside guest
            // memory, no indirect table (never offered), no longer than
            // the queue. Anything else gets nothing.
            let written = match Segments::collect(memory, queue, head, true) {
                Ok(segments) => {
                    let len = segments.total().min(MAX_BYTES_PER_BUFFER as usize);
                    let mut bytes = vec![0u8; len];
                    match self.source.read_exact(&mut bytes) {
                        Ok(()) if segments.write(memory, 0, &bytes).is_ok() => len as u32,
                        _ => 0,
                    }
                }
                Err(err) => {
                    if self.bad_input.allow() {
                        tracing::warn!(%err, "virtio-rng: a malformed descriptor chain");
                    }
                    0
                }
            };
            if queue.add_used(&*memory, head, written).is_err() {
                tracing::debug!("virtio-rng: cannot return a buffer");
            }
            used_any = true;
        }
        if used_any {
            interrupt.signal(Interrupt::USED_RING);
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(&mut self, mut activation: Activation) {
        if let Some(queue) = activation.queues.pop() {
            self.active = Some((activation.memory, queue, activation.interrupt));
        }
    }

    fn queue_notify(&mut self, index: u32) {
        if index == 0 {
            self.fill_buffers();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::test_driver::{read_reg, reg};

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const QUEUE: u16 = 16;
    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    /// Brings the device up the way a driver does, through its registers.
    fn driver_ready() -> (MmioTransport, GuestMemory) {
        let (memory, _memfd) = crate::memory::create(1).expect("memory");
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let mut transport = MmioTransport::new(
            Box::new(Rng::new().expect("rng")),
            memory.clone(),
            interrupt,
        );
        reg(&mut transport, 0x070, 1 | 2);
        reg(&mut transport, 0x024, 1);
        reg(&mut transport, 0x020, 1); // VIRTIO_F_VERSION_1 is bit 32
        reg(&mut transport, 0x070, 1 | 2 | 8);
        reg(&mut transport, 0x030, 0);
        reg(&mut transport, 0x038, u32::from(QUEUE));
        reg(&mut transport, 0x080, DESC as u32);
        reg(&mut transport, 0x090, AVAIL as u32);
        reg(&mut transport, 0x0a0, USED as u32);
        reg(&mut transport, 0x044, 1);
        reg(&mut transport, 0x070, 1 | 2 | 8 | 4);
        (transport, memory)
    }

    fn descriptor(memory: &GuestMemory, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + u64::from(index) * 16;
        memory.write_obj(addr, GuestAddress(at)).expect("addr");
        memory.write_obj(len, GuestAddress(at + 8)).expect("len");
        memory
            .write_obj(flags, GuestAddress(at + 12))
            .expect("flags");
        memory.write_obj(next, GuestAddress(at + 14)).expect("next");
    }

    fn offer(memory: &GuestMemory, slot: u16, head: u16) {
        memory
            .write_obj(head, GuestAddress(AVAIL + 4 + u64::from(slot) * 2))
            .expect("ring");
        memory
            .write_obj(slot + 1, GuestAddress(AVAIL + 2))
            .expect("idx");
    }

    fn used(memory: &GuestMemory) -> (u16, Vec<(u32, u32)>) {
        let idx: u16 = memory.read_obj(GuestAddress(USED + 2)).expect("used idx");
        let entries = (0..u64::from(idx))
            .map(|i| {
                let at = USED + 4 + i * 8;
                (
                    memory.read_obj(GuestAddress(at)).expect("id"),
                    memory.read_obj(GuestAddress(at + 4)).expect("len"),
                )
            })
            .collect();
        (idx, entries)
    }

    #[test]
    fn fills_a_buffer_and_interrupts() {
        let (mut transport, memory) = driver_ready();
        assert_eq!(
            read_reg(&mut transport, 0x070),
            15,
            "the driver was refused"
        );
        descriptor(&memory, 0, 0x4000, 64, WRITE, 0);
        offer(&memory, 0, 0);
        reg(&mut transport, 0x050, 0);
        assert_eq!(used(&memory), (1, vec![(0, 64)]));
        let mut entropy = [0u8; 64];
        memory
            .read_slice(&mut entropy, GuestAddress(0x4000))
            .expect("buffer");
        assert_ne!(entropy, [0u8; 64]);
        assert_eq!(read_reg(&mut transport, 0x060) & Interrupt::USED_RING, 1);
        reg(&mut transport, 0x064, Interrupt::USED_RING);
        assert_eq!(read_reg(&mut transport, 0x060), 0);
    }

    #[test]
    fn malformed_chains_are_rejected_and_the_device_keeps_serving() {
        let (mut transport, memory) = driver_ready();
        // A buffer far outside the 1 MiB of guest memory.
        descriptor(&memory, 0, 0xffff_0000, 4096, WRITE, 0);
        // A chain that loops on itself.
        descriptor(&memory, 1, 0x5000, 16, WRITE | NEXT, 1);
        // A head index beyond the queue.
        offer(&memory, 0, 0);
        offer(&memory, 1, 1);
        offer(&memory, 2, QUEUE + 3);
        reg(&mut transport, 0x050, 0);
        // Then an ordinary request, which must still be served.
        descriptor(&memory, 2, 0x6000, 32, WRITE, 0);
        offer(&memory, 3, 2);
        reg(&mut transport, 0x050, 0);
        let (_, entries) = used(&memory);
        let last = entries.last().expect("a used entry");
        assert_eq!(*last, (2, 32), "{entries:?}");
        assert!(
            entries.iter().all(|&(_, len)| len <= MAX_BYTES_PER_BUFFER),
            "{entries:?}"
        );
        assert!(
            entries.iter().any(|&(id, len)| id == 0 && len == 0),
            "the out-of-memory buffer got bytes: {entries:?}"
        );
    }

    #[test]
    fn an_indirect_table_is_refused_since_it_was_never_offered() {
        const INDIRECT: u16 = 4;
        let (mut transport, memory) = driver_ready();
        // A table of two writable buffers, at 0x7000.
        for (i, addr) in [0x8000u64, 0x9000].into_iter().enumerate() {
            let at = 0x7000 + i as u64 * 16;
            memory.write_obj(addr, GuestAddress(at)).expect("addr");
            memory.write_obj(64u32, GuestAddress(at + 8)).expect("len");
            let flags = if i == 0 { WRITE | NEXT } else { WRITE };
            memory
                .write_obj(flags, GuestAddress(at + 12))
                .expect("flags");
            memory.write_obj(1u16, GuestAddress(at + 14)).expect("next");
        }
        descriptor(&memory, 0, 0x7000, 32, INDIRECT, 0);
        offer(&memory, 0, 0);
        reg(&mut transport, 0x050, 0);
        assert_eq!(used(&memory), (1, vec![(0, 0)]));
        let mut buffer = [0u8; 64];
        memory
            .read_slice(&mut buffer, GuestAddress(0x8000))
            .expect("buffer");
        assert_eq!(buffer, [0u8; 64], "the indirect table was followed");
    }

    #[test]
    fn a_queue_outside_guest_memory_is_refused() {
        let (memory, _memfd) = crate::memory::create(1).expect("memory");
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let mut transport =
            MmioTransport::new(Box::new(Rng::new().expect("rng")), memory, interrupt);
        reg(&mut transport, 0x038, u32::from(QUEUE));
        reg(&mut transport, 0x080, 0xf000_0000);
        reg(&mut transport, 0x044, 1);
        reg(&mut transport, 0x070, 1 | 2 | 8 | 4);
        assert_eq!(
            read_reg(&mut transport, 0x070) & 0x40,
            0x40,
            "DEVICE_NEEDS_RESET"
        );
        reg(&mut transport, 0x070, 0);
        assert_eq!(read_reg(&mut transport, 0x070), 0);
    }
}
