//! The guest's side of a device test: a driver that brings a device up
//! through its MMIO registers and keeps two split virtqueues, queue 0 (rx)
//! and queue 1 (tx), in guest memory. The devices under test work on their
//! own threads, so every wait polls the used ring with a deadline. Each
//! device's tests put their own packets or frames on top of it.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::memory::GuestMemory;

/// Small, so that tests wrap the rings soon.
pub const QUEUE: u16 = 16;
/// Descriptor flags.
pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
pub const INDIRECT: u16 = 4;
/// How long a device thread gets for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(5);

/// Where one queue's rings and buffers live in guest memory.
#[derive(Debug)]
pub struct Ring {
    index: u32,
    desc: u64,
    avail: u64,
    used: u64,
    buffers: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    /// Below 1 MiB, the least guest memory a test has.
    fn new(index: u32) -> Self {
        let base = if index == 0 { 0x10000 } else { 0x40000 };
        Self {
            index,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            buffers: base + 0x3000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// One descriptor slot's buffer: 4 KiB each.
    pub fn buffer(&self, desc: u16) -> u64 {
        self.buffers + u64::from(desc) * 0x1000
    }
}

pub fn reg(transport: &mut MmioTransport, offset: u64, value: u32) {
    transport.write(offset, &value.to_le_bytes());
}

pub fn read_reg(transport: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    transport.read(offset, &mut data);
    u32::from_le_bytes(data)
}

#[derive(Debug)]
pub struct Driver {
    pub transport: MmioTransport,
    pub memory: GuestMemory,
    pub rx: Ring,
    pub tx: Ring,
}

impl Driver {
    /// `device` behind a transport in `memory_mib` of guest memory, not yet
    /// activated.
    pub fn new(device: Box<dyn VirtioDevice>, memory_mib: u32) -> Self {
        let (memory, _memfd) = crate::memory::create(memory_mib).expect("memory");
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let transport = MmioTransport::new(device, memory.clone(), interrupt);
        Self {
            transport,
            memory,
            rx: Ring::new(0),
            tx: Ring::new(1),
        }
    }

    /// Resets the device and brings it up again with every offered feature
    /// accepted and rx and tx set up; any further queue is left alone.
    pub fn activate(&mut self) {
        let t = &mut self.transport;
        reg(t, 0x070, 0);
        self.rx = Ring::new(0);
        self.tx = Ring::new(1);
        // As a driver does, rings start out zeroed, also after a reset.
        for ring in [&self.rx, &self.tx] {
            self.memory
                .write_slice(&[0u8; 0x3000], GuestAddress(ring.desc))
                .expect("rings");
        }
        reg(t, 0x070, 1 | 2);
        for select in 0..2 {
            reg(t, 0x014, select);
            let offered = read_reg(t, 0x010);
            reg(t, 0x024, select);
            reg(t, 0x020, offered);
        }
        reg(t, 0x070, 1 | 2 | 8);
        for ring in [&self.rx, &self.tx] {
            reg(t, 0x030, ring.index);
            reg(t, 0x038, u32::from(QUEUE));
            reg(t, 0x080, ring.desc as u32);
            reg(t, 0x090, ring.avail as u32);
            reg(t, 0x0a0, ring.used as u32);
            reg(t, 0x044, 1);
        }
        reg(t, 0x070, 1 | 2 | 8 | 4);
        assert_eq!(read_reg(t, 0x070), 15, "the driver was refused");
    }

    fn ring(&mut self, index: u32) -> &mut Ring {
        if index == 0 {
            &mut self.rx
        } else {
            &mut self.tx
        }
    }

    fn ring_ref(&self, index: u32) -> &Ring {
        if index == 0 { &self.rx } else { &self.tx }
    }

    /// Writes descriptor `desc` of a queue's table as given.
    pub fn write_descriptor(
        &self,
        queue: u32,
        desc: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.ring_ref(queue).desc + u64::from(desc) * 16;
        self.memory.write_obj(addr, GuestAddress(at)).expect("addr");
        self.memory
            .write_obj(len, GuestAddress(at + 8))
            .expect("len");
        self.memory
            .write_obj(flags, GuestAddress(at + 12))
            .expect("flags");
        self.memory
            .write_obj(next, GuestAddress(at + 14))
            .expect("next");
    }

    /// Puts `head` on the available ring and kicks the device, whether or
    /// not the device still holds it: an honest driver offers a head once
    /// per use, a hostile one as often as it likes.
    pub fn make_available(&mut self, queue: u32, head: u16) {
        let memory = self.memory.clone();
        let ring = self.ring(queue);
        let slot = u64::from(ring.avail_idx % QUEUE);
        memory
            .write_obj(head, GuestAddress(ring.avail + 4 + slot * 2))
            .expect("ring");
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        memory
            .write_obj(ring.avail_idx, GuestAddress(ring.avail + 2))
            .expect("idx");
        reg(&mut self.transport, 0x050, queue);
    }

    /// Writes a chain of descriptors (address, length, device-writable) and
    /// offers it; returns its head.
    pub fn offer(&mut self, queue: u32, parts: &[(u64, u32, bool)]) -> u16 {
        let head = self.ring_ref(queue).next_desc;
        for (i, &(addr, len, writable)) in parts.iter().enumerate() {
            let desc = (head + i as u16) % QUEUE;
            let mut flags = if writable { WRITE } else { 0 };
            if i + 1 < parts.len() {
                flags |= NEXT;
            }
            self.write_descriptor(queue, desc, addr, len, flags, (desc + 1) % QUEUE);
        }
        self.ring(queue).next_desc = (head + parts.len() as u16) % QUEUE;
        self.make_available(queue, head);
        head
    }

    /// Offers one descriptor with the flags given (`INDIRECT`, say);
    /// returns its head.
    pub fn offer_raw(&mut self, queue: u32, addr: u64, len: u32, flags: u16) -> u16 {
        let head = self.ring_ref(queue).next_desc;
        self.write_descriptor(queue, head, addr, len, flags, 0);
        self.ring(queue).next_desc = (head + 1) % QUEUE;
        self.make_available(queue, head);
        head
    }

    /// Posts an rx buffer split into descriptors of these lengths; returns
    /// its head.
    pub fn post_rx(&mut self, lens: &[u32]) -> u16 {
        let first = self.rx.next_desc;
        let parts: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| (self.rx.buffer((first + i as u16) % QUEUE), len, true))
            .collect();
        self.offer(0, &parts)
    }

    /// The tx slot buffer the next descriptor offered on tx would get.
    pub fn next_tx_buffer(&self, i: u16) -> u64 {
        self.tx.buffer((self.tx.next_desc + i) % QUEUE)
    }

    fn used_idx(&self, ring: &Ring) -> u16 {
        self.memory
            .read_obj(GuestAddress(ring.used + 2))
            .expect("used idx")
    }

    /// The next used entry of a queue, waiting for it.
    pub fn used(&mut self, queue: u32) -> (u16, u32) {
        let deadline = Instant::now() + WAIT;
        while self.used_idx(self.ring_ref(queue)) == self.ring_ref(queue).used_seen {
            assert!(Instant::now() < deadline, "queue {queue}: nothing used");
            std::thread::sleep(Duration::from_millis(1));
        }
        let memory = self.memory.clone();
        let ring = self.ring(queue);
        let at = ring.used + 4 + u64::from(ring.used_seen % QUEUE) * 8;
        ring.used_seen = ring.used_seen.wrapping_add(1);
        let id: u32 = memory.read_obj(GuestAddress(at)).expect("id");
        let len: u32 = memory.read_obj(GuestAddress(at + 4)).expect("len");
        (id as u16, len)
    }

    /// Whether the queue has no used entries not looked at yet, after a
    /// grace period for the device thread.
    pub fn nothing_more_used(&self, queue: u32) -> bool {
        std::thread::sleep(Duration::from_millis(100));
        let ring = self.ring_ref(queue);
        self.used_idx(ring) == ring.used_seen
    }

    /// Reads back a used rx chain, following its descriptors.
    pub fn read_chain(&self, head: u16, len: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut desc = head;
        while bytes.len() < len as usize {
            let at = self.rx.desc + u64::from(desc) * 16;
            let addr: u64 = self.memory.read_obj(GuestAddress(at)).expect("addr");
            let size: u32 = self.memory.read_obj(GuestAddress(at + 8)).expect("len");
            let take = size.min(len - bytes.len() as u32) as usize;
            let mut part = vec![0u8; take];
            self.memory
                .read_slice(&mut part, GuestAddress(addr))
                .expect("buffer");
            bytes.extend(part);
            desc = self.memory.read_obj(GuestAddress(at + 14)).expect("next");
        }
        bytes
    }
}
