use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;

use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::vhost_user::{memory_table, ring_addresses};
use super::*;
use crate::devices::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{Interrupt, VIRTIO_F_VERSION_1};
use crate::memory::{MMIO_GAP_END, MMIO_GAP_START};

const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const LOG_ALL: u64 = 1 << 26;

/// Just enough of a vhost-user back end for the handshake in [`Fs::new`]:
/// it answers the two GET requests and swallows the rest.
struct FakeBackend {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    fn start(features: u64) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("backend.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let thread = std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            serve(stream, features);
        });
        Self {
            _dir: dir,
            path,
            thread: Some(thread),
        }
    }

    fn device(&self, tag: &str) -> Fs {
        Fs::new(tag, &self.path).expect("fs device")
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        // The device hung up first (it is dropped before), which ends serve().
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: UnixStream, features: u64) {
    let mut header = [0u8; 12];
    while stream.read_exact(&mut header).is_ok() {
        let field = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("u32"));
        let (request, size) = (field(0), field(8));
        let mut body = vec![0u8; size as usize];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let value = match request {
            GET_FEATURES => features,
            GET_PROTOCOL_FEATURES => 0,
            _ => continue,
        };
        let mut reply = Vec::with_capacity(20);
        reply.extend_from_slice(&request.to_le_bytes());
        reply.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes()); // version 1, REPLY
        reply.extend_from_slice(&8u32.to_le_bytes());
        reply.extend_from_slice(&value.to_le_bytes());
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}

fn transport(device: Fs) -> MmioTransport {
    let (memory, _memfd) = crate::memory::create(1).expect("memory");
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    MmioTransport::new(Box::new(device), memory, interrupt)
}

fn read(transport: &mut MmioTransport, offset: u64, width: usize) -> Vec<u8> {
    let mut data = vec![0xaa; width];
    transport.read(offset, &mut data);
    data
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue_at_any_width() {
    let backend = FakeBackend::start(VIRTIO_F_VERSION_1);
    let mut transport = transport(backend.device("hullfs"));
    const CONFIG: u64 = 0x100;
    assert_eq!(read(&mut transport, 0x008, 4), 26u32.to_le_bytes());
    assert_eq!(read(&mut transport, CONFIG, 4), b"hull");
    assert_eq!(read(&mut transport, CONFIG + 4, 4), b"fs\0\0");
    let bytes: Vec<u8> = (0..TAG_LEN as u64)
        .flat_map(|at| read(&mut transport, CONFIG + at, 1))
        .collect();
    assert_eq!(&bytes[..6], b"hullfs");
    assert!(bytes[6..].iter().all(|&b| b == 0), "NUL padded: {bytes:?}");
    // Odd offsets and widths.
    assert_eq!(read(&mut transport, CONFIG + 1, 2), b"ul");
    assert_eq!(read(&mut transport, CONFIG + 3, 3), b"lfs");
    assert_eq!(read(&mut transport, CONFIG + 2, 8), b"llfs\0\0\0\0");
    // num_request_queues, whole and in pieces, straddling the tag's end.
    assert_eq!(read(&mut transport, CONFIG + 36, 4), 1u32.to_le_bytes());
    assert_eq!(read(&mut transport, CONFIG + 35, 2), [0, 1]);
    assert_eq!(read(&mut transport, CONFIG + 36, 1), [1]);
    // Past the end of the config space: zeros, even when a read straddles it.
    assert_eq!(read(&mut transport, CONFIG + 38, 4), [0, 0, 0, 0]);
    assert_eq!(read(&mut transport, CONFIG + 0x200, 4), [0, 0, 0, 0]);
    // Writes change nothing.
    transport.write(CONFIG, b"evil");
    assert_eq!(read(&mut transport, CONFIG, 4), b"hull");
}

#[test]
fn a_36_byte_tag_fills_the_field_without_a_nul() {
    let tag = "t".repeat(TAG_LEN);
    let config = config_space(&tag).expect("36 bytes fit");
    assert_eq!(&config[..TAG_LEN], tag.as_bytes());
    assert_eq!(config[TAG_LEN..], 1u32.to_le_bytes());
}

#[test]
fn bad_tags_are_refused_by_name() {
    for tag in [String::new(), "t".repeat(TAG_LEN + 1), "a\0b".into()] {
        let err = config_space(&tag).expect_err(&tag).to_string();
        assert!(err.starts_with("fs.tag "), "{err}");
    }
    let long = "é".repeat(19); // 38 bytes, 19 characters
    let err = config_space(&long).expect_err("too long").to_string();
    assert!(err.contains("38 bytes"), "{err}");
    // The tag is checked before the socket, so a bad one is named even
    // with no back end at all.
    let err = Fs::new("", Path::new("/nonexistent/hull-fs.sock"))
        .expect_err("empty tag")
        .to_string();
    assert!(err.starts_with("fs.tag "), "{err}");
}

#[test]
fn the_driver_is_offered_what_the_back_end_does_minus_vhost_user_bits() {
    let ring = (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);
    let virtiofsd_like =
        FakeBackend::start(VIRTIO_F_VERSION_1 | ring | PROTOCOL_FEATURES | LOG_ALL);
    assert_eq!(
        virtiofsd_like.device("a").features(),
        VIRTIO_F_VERSION_1 | ring
    );
    let bare = FakeBackend::start(0);
    assert_eq!(bare.device("a").features(), VIRTIO_F_VERSION_1);
}

#[test]
fn a_missing_or_refusing_socket_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("absent.sock");
    let err = Fs::new("a", &missing).expect_err("missing").to_string();
    assert!(err.starts_with("fs.socket_path "), "{err}");
    assert!(err.contains("no such socket"), "{err}");

    // A socket file nobody listens on any more.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    let err = Fs::new("a", &stale).expect_err("refused").to_string();
    assert!(err.starts_with("fs.socket_path "), "{err}");
    assert!(err.contains("connection refused"), "{err}");
}

fn queue_at(desc: u64, avail: u64, used: u64) -> Queue {
    let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
    queue.set_size(16);
    let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
    let (low, high) = split(desc);
    queue.set_desc_table_address(low, high);
    let (low, high) = split(avail);
    queue.set_avail_ring_address(low, high);
    let (low, high) = split(used);
    queue.set_used_ring_address(low, high);
    queue
}

#[test]
fn ring_and_memory_addresses_follow_the_split_around_the_mmio_gap() {
    // 3 GiB + 2 MiB: the last 2 MiB land above 4 GiB. The memfd is sparse,
    // so this costs address space, not RAM.
    let (memory, memfd) = crate::memory::create(3 * 1024 + 2).expect("memory");
    let table = memory_table(&memory).expect("table");
    assert_eq!(table.len(), 2);
    assert_eq!(
        (
            table[0].guest_phys_addr,
            table[0].memory_size,
            table[0].mmap_offset
        ),
        (0, MMIO_GAP_START, 0)
    );
    assert_eq!(
        (
            table[1].guest_phys_addr,
            table[1].memory_size,
            table[1].mmap_offset
        ),
        (MMIO_GAP_END, 2 << 20, MMIO_GAP_START)
    );
    let inode = |fd| {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("stat")
    };
    let memfd_inode = std::os::unix::fs::MetadataExt::ino(&memfd.metadata().expect("stat"));
    assert!(table.iter().all(|r| inode(r.mmap_handle) == memfd_inode));

    let low = memory.find_region(GuestAddress(0)).expect("low").as_ptr() as u64;
    let high = memory
        .find_region(GuestAddress(MMIO_GAP_END))
        .expect("high")
        .as_ptr() as u64;
    assert_eq!(table[0].userspace_addr, low);
    assert_eq!(table[1].userspace_addr, high);

    // A ring with its parts on both sides of the gap.
    let queue = queue_at(0x10_0000, MMIO_GAP_START - 0x1000, MMIO_GAP_END + 0x2000);
    let ring = ring_addresses(&memory, 1, &queue).expect("addresses");
    assert_eq!(ring.desc_table_addr, low + 0x10_0000);
    assert_eq!(ring.avail_ring_addr, low + MMIO_GAP_START - 0x1000);
    assert_eq!(ring.used_ring_addr, high + 0x2000);
    assert_eq!((ring.queue_size, ring.queue_max_size), (16, QUEUE_SIZE));

    // In the gap itself there is nothing to translate to.
    let queue = queue_at(MMIO_GAP_START + 0x1000, 0x2000, 0x3000);
    let Err(err) = ring_addresses(&memory, 1, &queue) else {
        panic!("a ring in the MMIO gap was translated");
    };
    let err = err.to_string();
    assert!(
        err.contains("queue 1") && err.contains("descriptor table"),
        "{err}"
    );
}
