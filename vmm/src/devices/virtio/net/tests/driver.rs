//! The guest's side of a test: a driver that brings the device up through
//! its MMIO registers and keeps split virtqueues in guest memory.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::frame::HEADER_LEN;
use super::super::{Net, NetConfig};
use super::host::{MAC, MTU, create_tap, is_ours};
use crate::devices::BusDevice;
use crate::devices::virtio::Interrupt;
use crate::devices::virtio::mmio::MmioTransport;
use crate::memory::GuestMemory;

const QUEUE: u16 = 16;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
pub(super) const WAIT: Duration = Duration::from_secs(5);

/// Where one queue's rings and buffers live in guest memory.
pub(super) struct Ring {
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
    fn new(index: u32, base: u64) -> Self {
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
    pub(super) fn buffer(&self, desc: u16) -> u64 {
        self.buffers + u64::from(desc) * 0x1000
    }
}

pub(super) fn reg(transport: &mut MmioTransport, offset: u64, value: u32) {
    transport.write(offset, &value.to_le_bytes());
}

pub(super) fn read_reg(transport: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    transport.read(offset, &mut data);
    u32::from_le_bytes(data)
}

pub(super) struct Driver {
    pub(super) transport: MmioTransport,
    pub(super) memory: GuestMemory,
    pub(super) rx: Ring,
    pub(super) tx: Ring,
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
        let (memory, _memfd) = crate::memory::create(2).expect("memory");
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let transport = MmioTransport::new(Box::new(device), memory.clone(), interrupt);
        let driver = Self {
            transport,
            memory,
            rx: Ring::new(0, 0x10000),
            tx: Ring::new(1, 0x40000),
        };
        (driver, tap)
    }

    /// Brings the device up with every offered feature accepted.
    pub(super) fn activate(&mut self) {
        let t = &mut self.transport;
        reg(t, 0x070, 0);
        self.rx = Ring::new(0, 0x10000);
        self.tx = Ring::new(1, 0x40000);
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

    pub(super) fn ready(index: usize) -> Self {
        let (mut driver, _tap) = Self::new(index);
        driver.activate();
        for _ in 0..4 {
            driver.post_rx(&[4096]);
        }
        driver
    }

    fn ring(&mut self, index: u32) -> &mut Ring {
        if index == 0 {
            &mut self.rx
        } else {
            &mut self.tx
        }
    }

    /// Writes a chain of descriptors (address, length, device-writable) and
    /// offers it; returns its head.
    pub(super) fn offer(&mut self, queue: u32, parts: &[(u64, u32, bool)]) -> u16 {
        let memory = self.memory.clone();
        let ring = self.ring(queue);
        let head = ring.next_desc;
        for (i, &(addr, len, writable)) in parts.iter().enumerate() {
            let desc = (head + i as u16) % QUEUE;
            let mut flags = if writable { WRITE } else { 0 };
            if i + 1 < parts.len() {
                flags |= NEXT;
            }
            let at = ring.desc + u64::from(desc) * 16;
            memory.write_obj(addr, GuestAddress(at)).expect("addr");
            memory.write_obj(len, GuestAddress(at + 8)).expect("len");
            memory
                .write_obj(flags, GuestAddress(at + 12))
                .expect("flags");
            memory
                .write_obj((desc + 1) % QUEUE, GuestAddress(at + 14))
                .expect("next");
        }
        ring.next_desc = (head + parts.len() as u16) % QUEUE;
        let slot = u64::from(ring.avail_idx % QUEUE);
        memory
            .write_obj(head, GuestAddress(ring.avail + 4 + slot * 2))
            .expect("ring");
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        memory
            .write_obj(ring.avail_idx, GuestAddress(ring.avail + 2))
            .expect("idx");
        reg(&mut self.transport, 0x050, queue);
        head
    }

    /// Posts an rx buffer split into descriptors of these lengths.
    pub(super) fn post_rx(&mut self, lens: &[u32]) -> u16 {
        let first = self.rx.next_desc;
        let parts: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| (self.rx.buffer((first + i as u16) % QUEUE), len, true))
            .collect();
        self.offer(0, &parts)
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
            let addr = self.tx.buffer((self.tx.next_desc + i as u16) % QUEUE);
            self.memory
                .write_slice(&rest[..take], GuestAddress(addr))
                .expect("frame");
            parts.push((addr, take as u32, false));
            rest = &rest[take..];
        }
        self.offer(1, &parts)
    }

    /// The next used entry of a queue, waiting for it.
    pub(super) fn used(&mut self, queue: u32) -> (u16, u32) {
        let memory = self.memory.clone();
        let ring = self.ring(queue);
        let deadline = Instant::now() + WAIT;
        loop {
            let idx: u16 = memory.read_obj(GuestAddress(ring.used + 2)).expect("idx");
            if idx != ring.used_seen {
                break;
            }
            assert!(Instant::now() < deadline, "queue {queue}: nothing used");
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = ring.used + 4 + u64::from(ring.used_seen % QUEUE) * 8;
        ring.used_seen = ring.used_seen.wrapping_add(1);
        let id: u32 = memory.read_obj(GuestAddress(at)).expect("id");
        let len: u32 = memory.read_obj(GuestAddress(at + 4)).expect("len");
        (id as u16, len)
    }

    /// Reads back a used rx chain, following its descriptors.
    fn read_chain(&self, head: u16, len: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut desc = head;
        while bytes.len() < len as usize {
            let at = self.rx.desc + u64::from(desc) * 16;
            let addr: u64 = self.memory.read_obj(GuestAddress(at)).expect("addr");
            let size: u32 = self.memory.read_obj(GuestAddress(at + 8)).expect("len");
            let mut part = vec![0u8; size.min(len - bytes.len() as u32) as usize];
            self.memory
                .read_slice(&mut part, GuestAddress(addr))
                .expect("buffer");
            bytes.extend(part);
            desc = self.memory.read_obj(GuestAddress(at + 14)).expect("next");
        }
        bytes
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
