//! A descriptor chain as one scattered byte range. Devices whose messages
//! may be split across descriptors anywhere (a header across two, or
//! sharing one with the payload) check the chain once, when they pop it,
//! and then read or write it by offset without caring where the descriptor
//! boundaries fall.
//!
//! The walk is the device's own rather than `virtio-queue`'s chain
//! iterator, because that iterator follows indirect tables of up to 65,535
//! entries whether or not the feature was negotiated, and hides from its
//! caller that it did. No device here offers `VIRTIO_RING_F_INDIRECT_DESC`,
//! so an indirect descriptor is a hostile or broken driver: it is refused,
//! and a chain is never longer than the queue it came from. Each
//! descriptor is read from guest memory exactly once, so a driver that
//! rewrites the table while it is walked cannot get past these checks.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// Why a chain was refused; each device wraps it in its own error, so the
/// messages read the same whichever device logs them.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("a descriptor of chain {head} goes the wrong direction")]
    WrongDirection { head: u16 },
    #[error("a buffer at {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("chain {head} uses an indirect descriptor table, which was not negotiated")]
    Indirect { head: u16 },
    #[error("chain {head} links to descriptor {index}, beyond the queue's {size}")]
    BadIndex { head: u16, index: u16, size: u16 },
    #[error("chain {head} is longer than the queue's {size} descriptors (a loop)")]
    TooLong { head: u16, size: u16 },
    #[error("the descriptor table of queue size {size} is outside guest memory")]
    TableOutsideMemory { size: u16 },
}

/// Bytes of one split-ring descriptor.
const DESCRIPTOR_LEN: u64 = 16;

/// One descriptor's buffer, already checked to lie inside guest memory.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// The buffers of one chain, all in the direction the queue needs.
#[derive(Debug)]
pub struct Segments {
    head: u16,
    list: Vec<Segment>,
    total: usize,
}

impl Segments {
    /// Walks the chain that starts at `head` in `queue`'s descriptor
    /// table: every descriptor device-writable (`device_writable`) or every
    /// one device-readable, inside guest memory, none indirect, and at most
    /// the queue's size of them. A mixed chain is refused rather than
    /// split, since none of the devices here has a request that both reads
    /// and writes.
    pub fn collect(
        memory: &GuestMemory,
        queue: &Queue,
        head: u16,
        device_writable: bool,
    ) -> Result<Self, ChainError> {
        let table = GuestAddress(queue.desc_table());
        let size = queue.size();
        let mut list = Vec::new();
        let mut total = 0usize;
        let mut index = head;
        loop {
            if list.len() == usize::from(size) {
                return Err(ChainError::TooLong { head, size });
            }
            if index >= size {
                return Err(ChainError::BadIndex { head, index, size });
            }
            let at = table
                .checked_add(u64::from(index) * DESCRIPTOR_LEN)
                .ok_or(ChainError::TableOutsideMemory { size })?;
            let descriptor: Descriptor = memory
                .read_obj(at)
                .map_err(|_| ChainError::TableOutsideMemory { size })?;
            if descriptor.refers_to_indirect_table() {
                return Err(ChainError::Indirect { head });
            }
            if descriptor.is_write_only() != device_writable {
                return Err(ChainError::WrongDirection { head });
            }
            let (addr, len) = (descriptor.addr(), descriptor.len() as usize);
            if !vm_memory::GuestMemoryBackend::check_range(memory, addr, len) {
                return Err(ChainError::OutsideMemory {
                    addr: addr.0,
                    len: descriptor.len(),
                });
            }
            total = total.saturating_add(len);
            list.push(Segment { addr, len });
            if !descriptor.has_next() {
                break;
            }
            index = descriptor.next();
        }
        Ok(Self { head, list, total })
    }

    /// The chain's head index, for the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The bytes of all the chain's buffers together.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Visits the `len` bytes at `offset` of the scattered range, one
    /// (guest address, byte range of the caller's buffer) piece at a time.
    fn pieces(
        &self,
        offset: usize,
        len: usize,
    ) -> impl Iterator<Item = (GuestAddress, usize, usize)> {
        let mut skip = offset;
        let mut done = 0usize;
        self.list.iter().filter_map(move |segment| {
            if done == len {
                return None;
            }
            if skip >= segment.len {
                skip -= segment.len;
                return None;
            }
            let take = (segment.len - skip).min(len - done);
            let piece = (segment.addr.unchecked_add(skip as u64), done, done + take);
            skip = 0;
            done += take;
            Some(piece)
        })
    }

    /// Fills `buf` from the bytes at `offset`. The caller checks against
    /// [`Self::total`] first: bytes past the end are left as they were.
    pub fn read(
        &self,
        memory: &GuestMemory,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), ChainError> {
        for (addr, start, end) in self.pieces(offset, buf.len()) {
            memory
                .read_slice(&mut buf[start..end], addr)
                .map_err(|_| outside(addr, start, end))?;
        }
        Ok(())
    }

    /// Writes `buf` at `offset`; like [`Self::read`], nothing goes past the
    /// end.
    pub fn write(&self, memory: &GuestMemory, offset: usize, buf: &[u8]) -> Result<(), ChainError> {
        for (addr, start, end) in self.pieces(offset, buf.len()) {
            memory
                .write_slice(&buf[start..end], addr)
                .map_err(|_| outside(addr, start, end))?;
        }
        Ok(())
    }
}

/// Only a memory map that shrank since [`Segments::collect`] gets here.
fn outside(addr: GuestAddress, start: usize, end: usize) -> ChainError {
    ChainError::OutsideMemory {
        addr: addr.0,
        len: (end - start) as u32,
    }
}
