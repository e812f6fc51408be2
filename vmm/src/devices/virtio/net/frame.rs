//! Frames on descriptor chains. Each chain holds one `virtio_net_hdr_v1`
//! and one Ethernet frame; the header may share a descriptor with the frame
//! or be split across several, so both directions treat the chain as one
//! scattered byte range.

use super::NetError;
use crate::devices::virtio::chain::Segments;
use crate::memory::GuestMemory;
use virtio_queue::Queue;

/// `struct virtio_net_hdr_v1`: the header every frame carries once
/// VIRTIO_F_VERSION_1 is negotiated, with or without VIRTIO_NET_F_MRG_RXBUF.
pub const HEADER_LEN: usize = std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>();
const _: () = assert!(HEADER_LEN == 12);
/// The largest frame either way: 64 KiB of payload and an Ethernet header,
/// what the virtio spec sizes a buffer of 65562 bytes (with the header) for.
pub const MAX_FRAME: usize = 65550;
/// A tap refuses anything shorter than an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// A frame behind its header, plus one byte so that a read that fills the
/// whole buffer is known to be too long rather than taken as truncated.
pub const SCRATCH_LEN: usize = HEADER_LEN + MAX_FRAME + 1;

/// The header of every frame given to the guest: no offload flags, and
/// `num_buffers` (the last field) 1, since each frame takes one chain.
pub fn rx_header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[10..12].copy_from_slice(&1u16.to_le_bytes());
    header
}

/// Whether the tap's header asks for work the guest never agreed to do: a
/// checksum to finish or a segmentation offload. Offloads are off on the
/// tap, so only someone changing that behind the device's back gets here.
pub fn needs_offload(header: &[u8]) -> bool {
    use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE};
    let flags = u32::from(header[0]);
    let gso_type = u32::from(header[1]);
    flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 || gso_type != VIRTIO_NET_HDR_GSO_NONE
}

/// Reads the frame of one tx chain, behind its header, into `buf`: device-
/// readable buffers only, inside guest memory, a whole header, and a frame
/// from [`MIN_FRAME`] to [`MAX_FRAME`] bytes. Returns the chain's length.
pub fn read_tx(
    memory: &GuestMemory,
    queue: &Queue,
    head: u16,
    buf: &mut [u8; SCRATCH_LEN],
) -> Result<usize, NetError> {
    let segments = Segments::collect(memory, queue, head, false)?;
    let Some(frame) = segments.total().checked_sub(HEADER_LEN) else {
        return Err(NetError::HeaderTooShort(segments.total()));
    };
    if frame < MIN_FRAME {
        return Err(NetError::FrameTooShort(frame));
    }
    if frame > MAX_FRAME {
        return Err(NetError::FrameTooLong(frame));
    }
    // At most HEADER_LEN + MAX_FRAME bytes, checked above.
    let len = segments.total();
    segments.read(memory, 0, &mut buf[..len])?;
    Ok(len)
}

/// A buffer the guest posted on the rx queue, held until a frame comes.
#[derive(Debug)]
pub struct RxBuffer {
    segments: Segments,
}

impl RxBuffer {
    /// Device-writable buffers inside guest memory, holding at least
    /// `min_len` bytes (a header and a frame of the MTU). The driver must
    /// post buffers that large, and a smaller one accepted would sit at the
    /// head of the queue with every frame too long for it.
    pub fn new(
        memory: &GuestMemory,
        queue: &Queue,
        head: u16,
        min_len: usize,
    ) -> Result<Self, NetError> {
        let segments = Segments::collect(memory, queue, head, true)?;
        if segments.total() < HEADER_LEN {
            return Err(NetError::HeaderTooShort(segments.total()));
        }
        if segments.total() < min_len {
            return Err(NetError::RxBufferTooSmall {
                len: segments.total(),
                need: min_len,
            });
        }
        Ok(Self { segments })
    }

    pub fn head(&self) -> u16 {
        self.segments.head()
    }

    /// How many bytes, header included, the buffer holds.
    pub fn capacity(&self) -> usize {
        self.segments.total()
    }

    /// Scatters `bytes` (a header and its frame) over the buffer; returns
    /// the length for the used ring.
    pub fn write(&self, memory: &GuestMemory, bytes: &[u8]) -> Result<u32, NetError> {
        if bytes.len() > self.capacity() {
            return Err(NetError::FrameTooLong(bytes.len() - HEADER_LEN));
        }
        self.segments.write(memory, 0, bytes)?;
        Ok(bytes.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rx_header_is_zero_but_for_num_buffers() {
        assert_eq!(rx_header(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(!needs_offload(&rx_header()));
        // VIRTIO_NET_HDR_F_DATA_VALID alone is only a hint.
        assert!(!needs_offload(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(needs_offload(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(needs_offload(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    }
}
