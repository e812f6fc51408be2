//! The vsock device against a hostile driver: the input is a script of
//! driver moves (descriptors anywhere, chains offered on rx and tx, avail
//! indexes moved at will, packets with any header) and host moves (clients
//! with CONNECT lines, services that write, read and hang up), with device
//! turns in between. The device is `hull-vmm`'s own worker and muxer, on
//! real virtqueues in guest memory and real Unix sockets.
//!
//! Guest memory has a hole, so chains can also straddle two regions or fall
//! between them.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hull_vmm::devices::virtio::vsock::fuzzing::{Device, HEADER_LEN, Header, TYPE_STREAM};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const GUEST_CID: u64 = 3;
const HOST_CID: u64 = 2;
/// A host service listens on `<uds>_SERVICE_PORT`; any other port has none.
const SERVICE_PORT: u32 = 1024;
const QUEUE_MAX: u16 = 256;

/// Two RAM regions with a hole between them.
const REGIONS: [(u64, usize); 2] = [(0, 0x8000), (0x10000, 0x8000)];
/// Buffers start after the rings and run over the hole into the second
/// region.
const BUFFERS: u64 = 0x4000;

/// Where one queue's rings are.
#[derive(Debug, Clone, Copy)]
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
}

const RX_RINGS: Rings = Rings {
    desc: 0x0000,
    avail: 0x1000,
    used: 0x1400,
};
const TX_RINGS: Rings = Rings {
    desc: 0x2000,
    avail: 0x3000,
    used: 0x3400,
};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Which {
    Rx,
    Tx,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// An offset from the start of the buffer area: in RAM, in the hole, or
    /// in the second region.
    Buffer(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Small(u16),
    Raw(u32),
}

/// A header as the guest fills it; `well_formed` fixes the addresses and
/// type so that the fuzzer spends its time past the first checks.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct FuzzHeader {
    well_formed: bool,
    to_service: bool,
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: Option<u32>,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl FuzzHeader {
    fn header(&self, payload_len: usize) -> Header {
        let mut header = Header {
            src_cid: self.src_cid,
            dst_cid: self.dst_cid,
            src_port: self.src_port,
            dst_port: self.dst_port,
            len: self.len.unwrap_or(payload_len as u32),
            type_: self.type_,
            op: self.op,
            flags: self.flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        };
        if self.well_formed {
            header.src_cid = GUEST_CID;
            header.dst_cid = HOST_CID;
            header.type_ = TYPE_STREAM;
            header.op = 1 + self.op % 7;
            header.src_port %= 4;
        }
        if self.to_service {
            header.dst_port = SERVICE_PORT;
        }
        header
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A raw descriptor in a queue's table.
    Descriptor {
        queue: Which,
        slot: u8,
        addr: Addr,
        len: Len,
        flags: u8,
        next: u8,
    },
    /// Makes `head` the avail ring's next entry.
    Offer {
        queue: Which,
        head: u8,
    },
    /// Moves the avail index anywhere, as a confused driver might.
    AvailIdx {
        queue: Which,
        idx: u16,
    },
    /// Raw bytes into a buffer.
    Bytes {
        at: u16,
        bytes: Vec<u8>,
    },
    /// A packet on tx in one or two descriptors, split at `split`.
    Send {
        header: FuzzHeader,
        payload: Vec<u8>,
        split: Option<u8>,
    },
    /// An rx buffer of `len` bytes in one or two descriptors.
    PostRx {
        len: u16,
        split: Option<u8>,
    },
    /// The device thread's loop turns once.
    Turn,
    /// A host client connects to the device's socket and writes `line`
    /// (meant to be `CONNECT <port>\n`).
    HostConnect {
        port: Option<u32>,
        line: Vec<u8>,
    },
    /// Host sockets (services' accepted connections, then clients) write.
    HostWrite {
        which: u8,
        bytes: Vec<u8>,
    },
    HostRead {
        which: u8,
    },
    HostClose {
        which: u8,
    },
}

/// The socket directory, made once: every input binds fresh listeners in
/// it, so nothing carries over from one input to the next.
fn socket_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hull-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("socket dir");
        dir
    })
}

fn bind(path: &std::path::Path) -> UnixListener {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

/// The driver's side of one queue.
struct DriverQueue {
    rings: Rings,
    size: u16,
    avail_idx: u16,
    next_slot: u16,
}

impl DriverQueue {
    fn table_slot(&mut self) -> u16 {
        let slot = self.next_slot % self.size;
        self.next_slot = self.next_slot.wrapping_add(1);
        slot
    }
}

struct Harness {
    memory: GuestMemoryMmap<()>,
    rx: DriverQueue,
    tx: DriverQueue,
    device: Device,
    uds: PathBuf,
    service: UnixListener,
    /// Host sockets: services' accepted connections and clients.
    host: Vec<UnixStream>,
    next_buffer: u64,
}

impl Harness {
    fn new(sizes: (u8, u8)) -> Option<Self> {
        let memory =
            GuestMemoryMmap::from_ranges(&REGIONS.map(|(start, len)| (GuestAddress(start), len)))
                .expect("guest memory");
        let size = |byte: u8| 1u16 << (byte % 9);
        let rx = DriverQueue {
            rings: RX_RINGS,
            size: size(sizes.0),
            avail_idx: 0,
            next_slot: 0,
        };
        let tx = DriverQueue {
            rings: TX_RINGS,
            size: size(sizes.1),
            avail_idx: 0,
            next_slot: 0,
        };
        let queue = |driver: &DriverQueue| {
            let mut queue = Queue::new(QUEUE_MAX).expect("queue");
            queue.set_size(driver.size);
            let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
            let (low, high) = split(driver.rings.desc);
            queue.set_desc_table_address(low, high);
            let (low, high) = split(driver.rings.avail);
            queue.set_avail_ring_address(low, high);
            let (low, high) = split(driver.rings.used);
            queue.set_used_ring_address(low, high);
            queue.set_ready(true);
            assert!(queue.is_valid(&memory), "the fixed layout is valid");
            queue
        };
        let dir = socket_dir();
        let uds = dir.join("v.sock");
        let listener = bind(&uds);
        let service = bind(&dir.join(format!("v.sock_{SERVICE_PORT}")));
        let device = Device::new(
            GUEST_CID,
            memory.clone(),
            queue(&rx),
            queue(&tx),
            uds.clone(),
            listener,
        )
        .ok()?;
        Some(Self {
            memory,
            rx,
            tx,
            device,
            uds,
            service,
            host: Vec::new(),
            next_buffer: BUFFERS,
        })
    }

    fn queue(&mut self, which: Which) -> &mut DriverQueue {
        match which {
            Which::Rx => &mut self.rx,
            Which::Tx => &mut self.tx,
        }
    }

    fn write_descriptor(
        &mut self,
        which: Which,
        slot: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let table = self.queue(which).rings.desc;
        let at = GuestAddress(table + 16 * u64::from(slot));
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        self.memory.write_slice(&bytes, at).expect("ring memory");
    }

    fn offer(&mut self, which: Which, head: u16) {
        let memory = self.memory.clone();
        let queue = self.queue(which);
        let entry = queue.rings.avail + 4 + 2 * u64::from(queue.avail_idx % queue.size);
        memory
            .write_obj(head, GuestAddress(entry))
            .expect("avail ring");
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        let idx = queue.avail_idx;
        memory
            .write_obj(idx, GuestAddress(queue.rings.avail + 2))
            .expect("avail idx");
    }

    /// Room for `len` bytes among the buffers, round robin, so that later
    /// packets do not overwrite ones the device has not taken yet (until
    /// the area wraps, which is a driver bug the device must survive too).
    fn buffer(&mut self, len: usize) -> u64 {
        let end = REGIONS[1].0 + REGIONS[1].1 as u64;
        if self.next_buffer + len as u64 > end {
            self.next_buffer = BUFFERS;
        }
        let at = self.next_buffer;
        self.next_buffer += len as u64;
        at
    }

    /// A chain of one or two descriptors over `len` bytes at `addr`.
    fn chain(&mut self, which: Which, addr: u64, len: usize, split: Option<u8>, flags: u16) {
        let first = self.queue(which).table_slot();
        match split.map(usize::from).filter(|&split| split < len) {
            Some(split) => {
                let second = self.queue(which).table_slot();
                self.write_descriptor(which, first, addr, split as u32, flags | F_NEXT, second);
                let rest = (len - split) as u32;
                self.write_descriptor(which, second, addr + split as u64, rest, flags, 0);
            }
            None => self.write_descriptor(which, first, addr, len as u32, flags, 0),
        }
        self.offer(which, first);
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Descriptor {
                queue,
                slot,
                addr,
                len,
                flags,
                next,
            } => {
                let addr = match addr {
                    Addr::Buffer(offset) => BUFFERS + u64::from(offset),
                    Addr::Raw(addr) => addr,
                };
                let len = match len {
                    Len::Small(len) => u32::from(len),
                    Len::Raw(len) => len,
                };
                let slot = u16::from(slot) % self.queue(queue).size;
                self.write_descriptor(queue, slot, addr, len, u16::from(flags), u16::from(next));
            }
            Step::Offer { queue, head } => self.offer(queue, u16::from(head)),
            Step::AvailIdx { queue, idx } => {
                let queue = self.queue(queue);
                queue.avail_idx = idx;
                let at = GuestAddress(queue.rings.avail + 2);
                self.memory.write_obj(idx, at).expect("avail idx");
            }
            Step::Bytes { at, bytes } => {
                // Bytes that fall outside RAM are the driver's loss.
                let _ = self
                    .memory
                    .write_slice(&bytes, GuestAddress(BUFFERS + u64::from(at)));
            }
            Step::Send {
                header,
                payload,
                split,
            } => {
                let mut bytes = header.header(payload.len()).to_bytes().to_vec();
                bytes.extend_from_slice(&payload);
                let addr = self.buffer(bytes.len());
                if self.memory.write_slice(&bytes, GuestAddress(addr)).is_ok() {
                    self.chain(Which::Tx, addr, bytes.len(), split, 0);
                }
            }
            Step::PostRx { len, split } => {
                let len = usize::from(len).max(HEADER_LEN);
                let addr = self.buffer(len);
                self.chain(Which::Rx, addr, len, split, F_WRITE);
            }
            Step::Turn => self.device.turn(),
            Step::HostConnect { port, line } => {
                if let Ok(mut stream) = UnixStream::connect(&self.uds) {
                    let _ = stream.set_nonblocking(true);
                    let line = match port {
                        Some(port) => format!("CONNECT {port}\n").into_bytes(),
                        None => line,
                    };
                    let _ = stream.write(&line);
                    self.host.push(stream);
                }
            }
            Step::HostWrite { which, bytes } => {
                self.accept_services();
                if let Some(stream) = self.host_socket(which) {
                    let _ = stream.write(&bytes);
                }
            }
            Step::HostRead { which } => {
                self.accept_services();
                if let Some(stream) = self.host_socket(which) {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf);
                }
            }
            Step::HostClose { which } => {
                self.accept_services();
                if !self.host.is_empty() {
                    let index = usize::from(which) % self.host.len();
                    self.host.remove(index);
                }
            }
        }
    }

    fn accept_services(&mut self) {
        while let Ok((stream, _)) = self.service.accept() {
            let _ = stream.set_nonblocking(true);
            self.host.push(stream);
        }
    }

    fn host_socket(&mut self, which: u8) -> Option<&mut UnixStream> {
        if self.host.is_empty() {
            return None;
        }
        let index = usize::from(which) % self.host.len();
        self.host.get_mut(index)
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue_sizes: (u8, u8),
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let Some(mut harness) = Harness::new(input.queue_sizes) else {
        return;
    };
    for step in input.steps.into_iter().take(256) {
        harness.step(step);
    }
    // Whatever the script left behind is seen through.
    harness.device.turn();
    harness.device.turn();
});
