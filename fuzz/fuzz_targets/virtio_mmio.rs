//! The virtio-mmio transport's register window against a hostile driver:
//! reads and writes of any width at any offset (registers and config
//! space), status changes in any order, queue addresses anywhere, resets
//! at any point, and notifications. Behind it is `hull-vmm`'s virtio-rng,
//! which serves notifications on the caller's thread, so activation hands
//! it queues whose rings and chains come from the input.

#![no_main]

use arbitrary::Arbitrary;
use hull_vmm::devices::BusDevice;
use hull_vmm::devices::virtio::Interrupt;
use hull_vmm::devices::virtio::mmio::{MMIO_LEN, MmioTransport};
use hull_vmm::devices::virtio::rng::Rng;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Small, with a hole, so that queue addresses often land outside it.
const REGIONS: [(u64, usize); 2] = [(0, 0x4000), (0x8000, 0x4000)];

/// The registers a driver writes, so that most writes hit one.
const REGISTERS: [u64; 18] = [
    0x014, 0x020, 0x024, 0x030, 0x038, 0x044, 0x050, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094,
    0x0a0, 0x0a4, 0x0fc, 0x100, 0x104,
];

#[derive(Arbitrary, Debug)]
enum Offset {
    Register(u8),
    Any(u16),
}

impl Offset {
    fn get(&self) -> u64 {
        match *self {
            Self::Register(index) => REGISTERS[usize::from(index) % REGISTERS.len()],
            // Past the window too: the bus hands a device only its own
            // offsets, but the transport must not care.
            Self::Any(offset) => u64::from(offset) % (MMIO_LEN + 0x100),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    Write32 {
        offset: Offset,
        value: u32,
    },
    /// Any width, any alignment.
    Write {
        offset: Offset,
        bytes: Vec<u8>,
    },
    Read {
        offset: Offset,
        len: u8,
    },
    /// The usual bring-up, so that the fuzzer reaches an active device
    /// often: features accepted, queue 0 at `desc`, `avail`, `used`.
    BringUp {
        size: u16,
        desc: u16,
        avail: u16,
        used: u16,
    },
    /// Bytes into guest memory: rings, descriptors, buffers.
    Memory {
        at: u16,
        bytes: Vec<u8>,
    },
}

fn write32(transport: &mut MmioTransport, offset: u64, value: u32) {
    transport.write(offset, &value.to_le_bytes());
}

fuzz_target!(|steps: Vec<Step>| {
    let memory =
        GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(start, len)| (GuestAddress(start), len)))
            .expect("guest memory");
    let Ok(eventfd) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let Ok(rng) = Rng::new() else {
        return;
    };
    let mut transport = MmioTransport::new(Box::new(rng), memory.clone(), Interrupt::new(eventfd));
    for step in steps.into_iter().take(512) {
        match step {
            Step::Write32 { offset, value } => write32(&mut transport, offset.get(), value),
            Step::Write { offset, bytes } => transport.write(offset.get(), &bytes),
            Step::Read { offset, len } => {
                let mut data = vec![0u8; usize::from(len % 9)];
                transport.read(offset.get(), &mut data);
            }
            Step::BringUp {
                size,
                desc,
                avail,
                used,
            } => {
                let t = &mut transport;
                write32(t, 0x070, 0);
                write32(t, 0x070, 1 | 2);
                for select in 0..2 {
                    write32(t, 0x014, select);
                    let mut offered = [0u8; 4];
                    t.read(0x010, &mut offered);
                    write32(t, 0x024, select);
                    write32(t, 0x020, u32::from_le_bytes(offered));
                }
                write32(t, 0x070, 1 | 2 | 8);
                write32(t, 0x030, 0);
                write32(t, 0x038, u32::from(size));
                write32(t, 0x080, u32::from(desc));
                write32(t, 0x090, u32::from(avail));
                write32(t, 0x0a0, u32::from(used));
                write32(t, 0x044, 1);
                write32(t, 0x070, 1 | 2 | 8 | 4);
            }
            Step::Memory { at, bytes } => {
                let _ = memory.write_slice(&bytes, GuestAddress(u64::from(at)));
            }
        }
    }
});
