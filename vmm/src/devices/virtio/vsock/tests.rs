//! The device driven as a driver would: registers through the MMIO
//! transport, real split virtqueues in guest memory, and host sockets on
//! the other side. The device works on its own thread, so every wait here
//! polls the used ring with a deadline.

use std::io::{Read, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::packet::{HEADER_LEN, Header, Op, SHUTDOWN_BOTH, TYPE_STREAM};
use super::*;
use crate::devices::BusDevice;
use crate::devices::virtio::test_driver::{self, INDIRECT, NEXT, WAIT, WRITE, read_reg, reg};

const CID: u64 = 3;

/// The shared virtqueue driver, with vsock's packets and its socket path.
#[derive(Debug)]
struct Driver {
    virtio: test_driver::Driver,
    _dir: tempfile::TempDir,
    uds: PathBuf,
}

// The tests reach the transport, memory and rings as if they were the
// driver's own.
impl Deref for Driver {
    type Target = test_driver::Driver;

    fn deref(&self) -> &Self::Target {
        &self.virtio
    }
}

impl DerefMut for Driver {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.virtio
    }
}

fn header(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

impl Driver {
    /// A device on a fresh socket path, not yet activated.
    fn new() -> Self {
        Self::with_memory(1)
    }

    /// The same, with `memory_mib` of guest memory.
    fn with_memory(memory_mib: u32) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let uds = dir.path().join("vsock.sock");
        let device = Vsock::new(CID, &uds).expect("vsock");
        Self {
            virtio: test_driver::Driver::new(Box::new(device), memory_mib),
            _dir: dir,
            uds,
        }
    }

    /// Brings the device up: rx and tx set up, the event queue left alone.
    fn activate(mut self) -> Self {
        self.virtio.activate();
        self
    }

    fn ready() -> Self {
        let mut driver = Self::new().activate();
        for _ in 0..4 {
            driver.post_rx(&[4096]);
        }
        driver
    }

    /// Sends a packet, the header and payload in one descriptor.
    fn send(&mut self, header: Header, payload: &[u8]) -> u16 {
        let header = Header {
            len: payload.len() as u32,
            ..header
        };
        let addr = self.next_tx_buffer(0);
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.memory
            .write_slice(&bytes, GuestAddress(addr))
            .expect("packet");
        self.offer(1, &[(addr, bytes.len() as u32, false)])
    }

    /// The next packet the device delivered, reposting a buffer for it.
    fn recv(&mut self) -> (Header, Vec<u8>) {
        let (head, len) = self.used(0);
        assert!(len as usize >= HEADER_LEN, "a {len}-byte rx packet");
        let bytes = self.read_chain(head, len);
        let header = Header::parse(bytes[..HEADER_LEN].try_into().expect("header"));
        assert_eq!(header.len as usize, bytes.len() - HEADER_LEN);
        self.post_rx(&[4096]);
        (header, bytes[HEADER_LEN..].to_vec())
    }

    fn expect(&mut self, op: Op) -> (Header, Vec<u8>) {
        let (header, payload) = self.recv();
        assert_eq!(Op::from_u16(header.op), Some(op), "{header:?}");
        assert_eq!((header.src_cid, header.dst_cid), (HOST_CID, CID));
        (header, payload)
    }

    fn port_path(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.uds.display()))
    }
}

fn accept(listener: &UnixListener) -> UnixStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                stream.set_read_timeout(Some(WAIT)).expect("timeout");
                return stream;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(err) => panic!("nobody connected: {err}"),
        }
    }
}

fn connect(uds: &Path) -> UnixStream {
    let stream = UnixStream::connect(uds).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while stream.read(&mut byte).expect("read") == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).expect("utf-8")
}

fn read_to_eof(stream: &mut UnixStream) -> Vec<u8> {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read to EOF");
    rest
}

/// Whether the device closed this client: an EOF, or a reset when it
/// closed with the client's bytes unread.
fn closed(stream: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn registers_and_config_space() {
    let mut driver = Driver::new();
    let t = &mut driver.transport;
    assert_eq!(read_reg(t, 0x008), VIRTIO_ID_VSOCK);
    for queue in 0..3 {
        reg(t, 0x030, queue);
        assert_eq!(read_reg(t, 0x034), 256);
    }
    reg(t, 0x030, 3);
    assert_eq!(read_reg(t, 0x034), 0, "only three queues");
    reg(t, 0x014, 1);
    assert_eq!(read_reg(t, 0x010), 1, "VIRTIO_F_VERSION_1 only");
    reg(t, 0x014, 0);
    assert_eq!(read_reg(t, 0x010), 0);
    let cid = 0x0506_0708u64;
    let device = Vsock::new(cid, &driver.uds.with_extension("other")).expect("vsock");
    let read = |offset: u64, len: usize| {
        let mut data = vec![0xaa; len];
        device.read_config(offset, &mut data);
        data
    };
    assert_eq!(read(0, 8), cid.to_le_bytes());
    assert_eq!(read(0, 4), [8, 7, 6, 5]);
    assert_eq!(read(4, 4), [0; 4]);
    assert_eq!(read(1, 2), [7, 6]);
    assert_eq!(read(3, 1), [5]);
    assert_eq!(
        read(2, 8),
        [6, 5, 0, 0, 0, 0, 0, 0],
        "past the end reads zeros"
    );
    assert_eq!(read(8, 4), [0; 4]);
    assert_eq!(read(u64::MAX, 2), [0; 2]);
    let mut data = [0u8; 4];
    driver.transport.read(0x100, &mut data);
    assert_eq!(u32::from_le_bytes(data), CID as u32);
}

#[test]
fn construction_names_a_bad_path_and_drop_removes_the_socket() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("file");
    std::fs::write(&file, "").expect("file");
    let err = Vsock::new(CID, &file)
        .expect_err("a regular file")
        .to_string();
    assert!(err.starts_with("vsock.uds_path "), "{err}");
    let err = Vsock::new(CID, &dir.path().join("no/such/dir/s"))
        .expect_err("a missing directory")
        .to_string();
    assert!(err.starts_with("vsock.uds_path "), "{err}");
    let err = Vsock::new(2, &dir.path().join("s")).expect_err("the host's CID");
    assert!(err.to_string().starts_with("vsock.guest_cid"), "{err}");

    let path = dir.path().join("s");
    let device = Vsock::new(CID, &path).expect("vsock");
    let err = Vsock::new(CID, &path).expect_err("in use").to_string();
    assert!(err.contains("another process listens"), "{err}");
    drop(device);
    assert!(!path.exists(), "the socket file outlived the device");
    // A stale socket left by a dead VMM is replaced.
    drop(UnixListener::bind(&path).expect("stale"));
    drop(Vsock::new(CID, &path).expect("over a stale socket"));
}

#[test]
fn guest_connects_to_a_host_socket_and_bytes_flow_both_ways() {
    let mut driver = Driver::ready();
    let listener = UnixListener::bind(driver.port_path(5000)).expect("listen");
    driver.send(header(Op::Request, 1234, 5000), &[]);
    let (response, _) = driver.expect(Op::Response);
    assert_eq!((response.src_port, response.dst_port), (5000, 1234));
    assert_eq!(response.buf_alloc, connection::BUF_ALLOC);
    let mut host = accept(&listener);

    host.write_all(b"ping").expect("write");
    let (rw, payload) = driver.expect(Op::Rw);
    assert_eq!(payload, b"ping");
    assert_eq!((rw.src_port, rw.dst_port), (5000, 1234));

    driver.send(header(Op::Rw, 1234, 5000), b"PING");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"PING");

    // The guest closes: the host reads EOF and the guest gets its RST.
    let mut shutdown = header(Op::Shutdown, 1234, 5000);
    shutdown.flags = SHUTDOWN_BOTH;
    driver.send(shutdown, &[]);
    driver.expect(Op::Rst);
    assert!(read_to_eof(&mut host).is_empty());
    // The connection is gone: more bytes on it are answered with RST.
    driver.send(header(Op::Rw, 1234, 5000), b"late");
    driver.expect(Op::Rst);
}

#[test]
fn guest_requests_without_a_host_listener_are_reset() {
    let mut driver = Driver::ready();
    driver.send(header(Op::Request, 1234, 6000), &[]);
    let (rst, _) = driver.expect(Op::Rst);
    assert_eq!((rst.src_port, rst.dst_port), (6000, 1234));
}

#[test]
fn host_connects_to_a_guest_port_with_a_connect_line() {
    let mut driver = Driver::ready();
    let mut client = connect(&driver.uds);
    client.write_all(b"CONNECT 1024\nearly").expect("write");
    let (request, _) = driver.expect(Op::Request);
    assert_eq!(request.dst_port, 1024);
    assert!(request.src_port >= 1 << 30, "{request:?}");
    let local = request.src_port;

    driver.send(header(Op::Response, 1024, local), &[]);
    assert_eq!(read_line(&mut client), format!("OK {local}\n"));
    // What the client sent right after its line reaches the guest.
    let (_, payload) = driver.expect(Op::Rw);
    assert_eq!(payload, b"early");

    driver.send(header(Op::Rw, 1024, local), b"hi");
    let mut got = [0u8; 2];
    client.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"hi");

    // The host closes: the guest hears SHUTDOWN both ways and answers RST.
    drop(client);
    let (shutdown, _) = driver.expect(Op::Shutdown);
    assert_eq!(shutdown.flags, SHUTDOWN_BOTH);
    driver.send(header(Op::Rst, 1024, local), &[]);
    assert!(driver.nothing_more_used(0), "an RST was answered");
}

#[test]
fn a_guest_rst_closes_the_host_client_and_bad_lines_close_only_their_client() {
    let mut driver = Driver::ready();
    let mut garbage = connect(&driver.uds);
    garbage.write_all(b"HELLO there\n").expect("write");
    let mut too_long = connect(&driver.uds);
    too_long.write_all(&[b'9'; 64]).expect("write");
    let mut bad_port = connect(&driver.uds);
    bad_port.write_all(b"CONNECT 99999999999\n").expect("write");
    for client in [&mut garbage, &mut too_long, &mut bad_port] {
        assert!(closed(client));
    }
    let mut good = connect(&driver.uds);
    good.write_all(b"CONNECT 7\n").expect("write");
    let (request, _) = driver.expect(Op::Request);
    assert_eq!(request.dst_port, 7);
    driver.send(header(Op::Rst, 7, request.src_port), &[]);
    assert!(read_to_eof(&mut good).is_empty(), "refused, so no OK line");
}

#[test]
fn clients_that_connect_before_activation_are_served_after() {
    let driver = Driver::new();
    let mut client = connect(&driver.uds);
    client.write_all(b"CONNECT 80\n").expect("write");
    let mut driver = driver.activate();
    driver.post_rx(&[4096]);
    let (request, _) = driver.expect(Op::Request);
    assert_eq!(request.dst_port, 80);
}

#[test]
fn split_headers_and_split_buffers_work() {
    let mut driver = Driver::new().activate();
    // rx: 20 bytes, then the rest of the header and the payload.
    driver.post_rx(&[20, 4096]);
    driver.post_rx(&[HEADER_LEN as u32, 4096]);
    let listener = UnixListener::bind(driver.port_path(5001)).expect("listen");
    // tx: the header split 10 + 34.
    let bytes = header(Op::Request, 99, 5001).to_bytes();
    let base = driver.tx.buffer(0);
    driver
        .memory
        .write_slice(&bytes, GuestAddress(base))
        .expect("header");
    driver.offer(1, &[(base, 10, false), (base + 10, 34, false)]);
    let (response, _) = driver.expect(Op::Response);
    assert_eq!(response.dst_port, 99);
    let mut host = accept(&listener);
    host.write_all(b"split").expect("write");
    let (_, payload) = driver.expect(Op::Rw);
    assert_eq!(payload, b"split");
    // tx: header and the first payload bytes share a descriptor.
    let mut bytes = Header {
        len: 6,
        ..header(Op::Rw, 99, 5001)
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(b"sha");
    let base = driver.tx.buffer(4);
    driver
        .memory
        .write_slice(&bytes, GuestAddress(base))
        .expect("packet");
    driver
        .memory
        .write_slice(b"red", GuestAddress(base + 0x800))
        .expect("payload");
    driver.offer(
        1,
        &[(base, bytes.len() as u32, false), (base + 0x800, 3, false)],
    );
    let mut got = [0u8; 6];
    host.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"shared");
}

#[test]
fn host_bytes_wait_for_guest_credit() {
    let mut driver = Driver::ready();
    let listener = UnixListener::bind(driver.port_path(5002)).expect("listen");
    let mut request = header(Op::Request, 77, 5002);
    request.buf_alloc = 8;
    driver.send(request, &[]);
    driver.expect(Op::Response);
    let mut host = accept(&listener);
    host.write_all(b"0123456789abcdefghij").expect("write");
    let (_, payload) = driver.expect(Op::Rw);
    assert_eq!(payload, b"01234567");
    // Out of credit: the device asks, once, and sends nothing more.
    driver.expect(Op::CreditRequest);
    assert!(driver.nothing_more_used(0));
    let mut update = header(Op::CreditUpdate, 77, 5002);
    update.buf_alloc = 8;
    update.fwd_cnt = 8;
    driver.send(update, &[]);
    let (_, payload) = driver.expect(Op::Rw);
    assert_eq!(payload, b"89abcdef");
    // "ghij" waits for more.
    driver.expect(Op::CreditRequest);
    // Every guest packet carries its credit: this one frees room for the
    // rest. A credit request from the guest is answered with our counters.
    let mut rw = header(Op::Rw, 77, 5002);
    (rw.buf_alloc, rw.fwd_cnt) = (8, 16);
    driver.send(rw, b"xyz");
    let (_, payload) = driver.expect(Op::Rw);
    assert_eq!(payload, b"ghij");
    let mut credit_request = header(Op::CreditRequest, 77, 5002);
    (credit_request.buf_alloc, credit_request.fwd_cnt) = (8, 16);
    driver.send(credit_request, &[]);
    let (update, _) = driver.expect(Op::CreditUpdate);
    assert_eq!(
        (update.fwd_cnt, update.buf_alloc),
        (3, connection::BUF_ALLOC)
    );
}

#[test]
fn malformed_chains_are_rejected_and_the_device_keeps_serving() {
    // An rx buffer the device could only read, first in line so that the
    // first packet meets it.
    let mut driver = Driver::new().activate();
    let rx_scratch = driver.rx.buffer(15);
    driver.offer(0, &[(rx_scratch, 4096, false)]);
    for _ in 0..4 {
        driver.post_rx(&[4096]);
    }
    let listener = UnixListener::bind(driver.port_path(5003)).expect("listen");
    let scratch = driver.tx.buffer(15);
    // Outside the 1 MiB of guest memory.
    driver.offer(1, &[(0xffff_0000, 64, false)]);
    // Too short for a header.
    driver.offer(1, &[(scratch, 20, false)]);
    // Device-writable where the device must read.
    driver.offer(1, &[(scratch, 64, true)]);
    // A header claiming more payload than the chain holds.
    let lying = Header {
        len: 1000,
        ..header(Op::Rw, 1, 5003)
    };
    driver
        .memory
        .write_slice(&lying.to_bytes(), GuestAddress(scratch))
        .expect("header");
    driver.offer(1, &[(scratch, HEADER_LEN as u32 + 10, false)]);
    // A forged source CID: dropped without an answer.
    let mut forged = header(Op::Request, 1, 5003);
    forged.src_cid = 42;
    driver.send(forged, &[]);
    // An unknown op and an unknown type: answered with RST.
    let mut unknown_op = header(Op::Request, 2, 5003);
    unknown_op.op = 99;
    driver.send(unknown_op, &[]);
    let mut datagram = header(Op::Request, 3, 5003);
    datagram.type_ = 2;
    driver.send(datagram, &[]);
    for _ in 0..7 {
        assert_eq!(driver.used(1).1, 0, "tx buffers are returned unwritten");
    }
    // Then an ordinary request, which must still be served.
    driver.send(header(Op::Request, 4, 5003), &[]);
    let mut ports = Vec::new();
    let mut zero_length = 0;
    while ports.len() < 3 {
        let (head, len) = driver.used(0);
        if len == 0 {
            zero_length += 1;
            continue;
        }
        let bytes = driver.read_chain(head, len);
        let header = Header::parse(bytes[..HEADER_LEN].try_into().expect("header"));
        ports.push((Op::from_u16(header.op), header.dst_port));
    }
    assert_eq!(zero_length, 1, "the read-only rx buffer");
    assert_eq!(
        ports,
        [
            (Some(Op::Rst), 2),
            (Some(Op::Rst), 3),
            (Some(Op::Response), 4)
        ]
    );
    accept(&listener);
}

#[test]
fn a_guest_overrunning_its_credit_is_reset() {
    let mut driver = Driver::ready();
    let _listener = UnixListener::bind(driver.port_path(5004)).expect("listen");
    driver.send(header(Op::Request, 5, 5004), &[]);
    driver.expect(Op::Response);
    // Nobody reads the host end; 64 KiB packets from several descriptors
    // until the guest is past what we advertised.
    let chunk = vec![1u8; 60 * 1024];
    let base = 0x80000;
    driver
        .memory
        .write_slice(&chunk, GuestAddress(base))
        .expect("payload");
    let mut rst = None;
    for _ in 0..16 {
        let head = header(Op::Rw, 5, 5004);
        let bytes = Header {
            len: chunk.len() as u32,
            ..head
        }
        .to_bytes();
        let at = driver.tx.buffer(0);
        driver
            .memory
            .write_slice(&bytes, GuestAddress(at))
            .expect("header");
        driver.offer(
            1,
            &[
                (at, HEADER_LEN as u32, false),
                (base, chunk.len() as u32, false),
            ],
        );
        driver.used(1);
        // Unasked-for credit updates come first; the guest ignores them.
        while !driver.nothing_more_used(0) {
            let (header, _) = driver.recv();
            if Op::from_u16(header.op) != Some(Op::CreditUpdate) {
                rst = Some(header);
            }
        }
        if rst.is_some() {
            break;
        }
    }
    let header = rst.expect("the device never reset the connection");
    assert_eq!(Op::from_u16(header.op), Some(Op::Rst), "{header:?}");
}

#[test]
fn reset_closes_every_connection() {
    let mut driver = Driver::ready();
    let listener = UnixListener::bind(driver.port_path(5005)).expect("listen");
    driver.send(header(Op::Request, 6, 5005), &[]);
    driver.expect(Op::Response);
    let mut host = accept(&listener);
    let mut client = connect(&driver.uds);
    client.write_all(b"CONNECT 8\n").expect("write");
    driver.expect(Op::Request);
    reg(&mut driver.transport, 0x070, 0);
    assert!(read_to_eof(&mut host).is_empty());
    assert!(read_to_eof(&mut client).is_empty());
    // The listener stays for the next driver.
    let _next = connect(&driver.uds);
}

const MIB: u64 = 1024 * 1024;
/// Entries of the largest indirect table a driver can offer.
const TABLE_ENTRIES: u32 = 65_535;
/// Where the tests below put it, above the rings and buffers.
const TABLE: u64 = 0x10_0000;

/// The test process's resident memory, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .expect("resident pages")
        .parse()
        .expect("a number");
    pages * 4096
}

/// Writes a 65,535-entry indirect table of one-byte writable buffers at
/// [`TABLE`]: a device that follows it keeps a megabyte of bookkeeping for
/// each chain that points to it.
fn write_huge_table(driver: &Driver) {
    let buffer = driver.rx.buffer(15);
    let mut table = Vec::with_capacity(TABLE_ENTRIES as usize * 16);
    for i in 0..TABLE_ENTRIES {
        let flags = if i + 1 == TABLE_ENTRIES {
            WRITE
        } else {
            WRITE | NEXT
        };
        table.extend_from_slice(&buffer.to_le_bytes());
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(&flags.to_le_bytes());
        table.extend_from_slice(&((i + 1) as u16).to_le_bytes());
    }
    driver
        .memory
        .write_slice(&table, GuestAddress(TABLE))
        .expect("table");
}

#[test]
fn a_guest_offering_one_head_again_and_again_cannot_make_the_device_hoard() {
    let mut driver = Driver::with_memory(4).activate();
    write_huge_table(&driver);
    let before = resident();
    let head = driver.offer_raw(0, TABLE, TABLE_ENTRIES * 16, INDIRECT);
    // The same head over and over, a queue's worth at a time, with no
    // packet waiting. A device that took every chain offered, following
    // the table, would hold a megabyte per offer; each batch waits until
    // such a device would have taken it, or a second.
    const BATCHES: u64 = 4;
    let per_batch = u64::from(test_driver::QUEUE);
    for batch in 1..=BATCHES {
        let offers = if batch == 1 { per_batch - 1 } else { per_batch };
        for _ in 0..offers {
            driver.make_available(0, head);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while resident() < before + batch * (per_batch - 1) * MIB && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let grown = resident().saturating_sub(before);
    assert!(
        grown < 16 * MIB,
        "the device's process grew by {} MiB for {} offers of one head",
        grown / MIB,
        BATCHES * per_batch
    );
    assert!(
        driver.nothing_more_used(0),
        "nothing was waiting for a buffer"
    );
}

#[test]
fn indirect_tables_are_refused_and_rx_buffers_are_taken_only_for_packets() {
    let mut driver = Driver::with_memory(4).activate();
    let listener = UnixListener::bind(driver.port_path(5010)).expect("listen");
    write_huge_table(&driver);
    let indirect = driver.offer_raw(0, TABLE, TABLE_ENTRIES * 16, INDIRECT);
    let good = driver.post_rx(&[4096]);
    // No packet waits, so no buffer is taken, and none comes back.
    assert!(driver.nothing_more_used(0));
    driver.send(header(Op::Request, 9, 5010), &[]);
    assert_eq!(
        driver.used(0),
        (indirect, 0),
        "the indirect chain comes back unwritten"
    );
    let (head, len) = driver.used(0);
    assert_eq!(head, good);
    let bytes = driver.read_chain(head, len);
    let response = Header::parse(bytes[..HEADER_LEN].try_into().expect("header"));
    assert_eq!(Op::from_u16(response.op), Some(Op::Response));
    accept(&listener);
    assert!(driver.nothing_more_used(0));
}
