//! The virtio-vsock packet header, and packets read from (tx) or written to
//! (rx) descriptor chains. A header may be split across descriptors or share
//! one with the payload, so both directions work on the chain as one
//! scattered byte range.

use virtio_queue::Queue;

use super::VsockError;
use crate::devices::virtio::chain::Segments;
use crate::memory::GuestMemory;

pub const HEADER_LEN: usize = 44;
/// The largest payload accepted from, or sent to, the guest in one packet
/// (Linux's own limit, `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// Stream sockets, the only type offered.
pub const TYPE_STREAM: u16 = 1;

/// `flags` bits of a SHUTDOWN: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    pub fn from_u16(op: u16) -> Option<Self> {
        Some(match op {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// `struct virtio_vsock_hdr`, all fields little endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2"));
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.len.to_le_bytes());
        bytes[28..30].copy_from_slice(&self.type_.to_le_bytes());
        bytes[30..32].copy_from_slice(&self.op.to_le_bytes());
        bytes[32..36].copy_from_slice(&self.flags.to_le_bytes());
        bytes[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        bytes
    }

    /// A reply to this packet: the addresses swapped, everything else zero.
    pub fn reply(&self, op: Op) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op as u16,
            ..Self::default()
        }
    }
}

/// A packet the guest sent on the tx queue.
#[derive(Debug)]
pub struct TxPacket {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl TxPacket {
    /// Reads and checks one tx chain: device-readable buffers only, inside
    /// guest memory, holding a whole header and the `len` bytes it claims.
    pub fn read(memory: &GuestMemory, queue: &Queue, head: u16) -> Result<Self, VsockError> {
        let segments = Segments::collect(memory, queue, head, false)?;
        if segments.total() < HEADER_LEN {
            return Err(VsockError::HeaderTooShort(segments.total()));
        }
        let mut bytes = [0u8; HEADER_LEN];
        segments.read(memory, 0, &mut bytes)?;
        let header = Header::parse(&bytes);
        let available = segments.total() - HEADER_LEN;
        if header.len > MAX_PAYLOAD || header.len as usize > available {
            return Err(VsockError::LenBeyondBuffer {
                len: header.len,
                available,
            });
        }
        let mut payload = vec![0u8; header.len as usize];
        segments.read(memory, HEADER_LEN, &mut payload)?;
        Ok(Self { header, payload })
    }
}

/// A buffer the guest posted on the rx queue, held until a packet is ready
/// for it.
#[derive(Debug)]
pub struct RxBuffer {
    segments: Segments,
}

impl RxBuffer {
    pub fn new(memory: &GuestMemory, queue: &Queue, head: u16) -> Result<Self, VsockError> {
        let segments = Segments::collect(memory, queue, head, true)?;
        if segments.total() < HEADER_LEN {
            return Err(VsockError::HeaderTooShort(segments.total()));
        }
        Ok(Self { segments })
    }

    pub fn head(&self) -> u16 {
        self.segments.head()
    }

    /// How many payload bytes fit after the header.
    pub fn max_payload(&self) -> u32 {
        (self.segments.total() - HEADER_LEN).min(MAX_PAYLOAD as usize) as u32
    }

    /// Writes the packet; returns the bytes written, for the used ring.
    pub fn write(
        &self,
        memory: &GuestMemory,
        header: &Header,
        payload: &[u8],
    ) -> Result<u32, VsockError> {
        if payload.len() > self.max_payload() as usize {
            return Err(VsockError::LenBeyondBuffer {
                len: payload.len() as u32,
                available: self.max_payload() as usize,
            });
        }
        let header = Header {
            len: payload.len() as u32,
            ..*header
        };
        self.segments.write(memory, 0, &header.to_bytes())?;
        self.segments.write(memory, HEADER_LEN, payload)?;
        Ok((HEADER_LEN + payload.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_little_endian() {
        let header = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 5000,
            len: 4,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0xdead_beef,
        };
        let bytes = header.to_bytes();
        assert_eq!(&bytes[0..8], &[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[16..20], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&bytes[28..32], &[1, 0, 5, 0]);
        assert_eq!(&bytes[40..44], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(Header::parse(&bytes), header);
    }

    #[test]
    fn a_reply_swaps_the_addresses() {
        let request = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1,
            dst_port: 2,
            op: Op::Request as u16,
            buf_alloc: 9,
            ..Header::default()
        };
        let reply = request.reply(Op::Rst);
        assert_eq!(
            (reply.src_cid, reply.dst_cid, reply.src_port, reply.dst_port),
            (2, 3, 2, 1)
        );
        assert_eq!((reply.op, reply.type_, reply.buf_alloc), (3, 1, 0));
        assert_eq!(Op::from_u16(7), Some(Op::CreditRequest));
        assert_eq!(Op::from_u16(0), None);
        assert_eq!(Op::from_u16(8), None);
    }
}
