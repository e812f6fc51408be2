//! A descriptor chain as one scattered byte range. Devices whose messages
//! may be split across descriptors anywhere (a header across two, or
//! sharing one with the payload) check the chain once, when they pop it,
//! and then read or write it by offset without caring where the descriptor
//! boundaries fall.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
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
}

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
    /// Walks the chain: every descriptor device-writable (`device_writable`)
    /// or every one device-readable, and inside guest memory. A mixed chain
    /// is refused rather than split, since none of the devices here has a
    /// request that both reads and writes.
    pub fn collect<M>(
        memory: &GuestMemory,
        chain: DescriptorChain<M>,
        device_writable: bool,
    ) -> Result<Self, ChainError>
    where
        M: Clone + Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let head = chain.head_index();
        let mut list = Vec::new();
        let mut total = 0usize;
        for descriptor in chain {
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
