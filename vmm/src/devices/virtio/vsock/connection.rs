//! One stream connection between a guest port and a host Unix socket, with
//! virtio-vsock's credit-based flow control in both directions.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::HOST_CID;
use super::packet::{Header, Op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// The receive buffer advertised to the guest, and the cap on bytes held
/// for a host socket that reads slower than the guest writes.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Below this much free space (as the guest last heard it) the guest may be
/// about to stall, so a CREDIT_UPDATE goes out without being asked for.
const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// How long the guest has to answer a host-initiated REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest has to answer our SHUTDOWN of both directions with an
/// RST before the connection is dropped anyway.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection's address: the host side's port and the guest side's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub local_port: u32,
    pub peer_port: u32,
}

impl Key {
    /// The connection a packet from the guest belongs to.
    pub fn of_guest_packet(header: &Header) -> Self {
        Self {
            local_port: header.dst_port,
            peer_port: header.src_port,
        }
    }
}

/// What becomes of a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Fate {
    Keep,
    /// Drop it and tell the guest with an RST.
    Kill,
}

/// What a connection has for the rx queue.
#[derive(Debug)]
pub enum Next {
    Packet(Header, Vec<u8>),
    Nothing,
    Kill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent or queued, RESPONSE not yet received.
    Connecting,
    Established,
}

/// Control packets owed to the guest, as bits.
mod owed {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const SHUTDOWN: u8 = 4;
    pub const CREDIT_UPDATE: u8 = 8;
    pub const CREDIT_REQUEST: u8 = 16;
}

#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    pub token: u64,
    pub key: Key,
    guest_cid: u64,
    state: State,
    owed: u8,
    /// In the muxer's queue of connections with something for the guest.
    pub queued: bool,
    /// Since the host socket's last edge it may hold bytes or an EOF; the
    /// socket is polled edge-triggered, so this holds until a read would
    /// block.
    readable: bool,
    host_eof: bool,
    host_hung_up: bool,
    host_write_shut: bool,
    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    /// Guest bytes not yet written to the host socket; never more than
    /// [`BUF_ALLOC`], since the guest must respect the credit we advertise.
    to_host: VecDeque<u8>,
    /// Guest bytes received, and forwarded to the host socket.
    recv_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard from us.
    fwd_cnt_told: Wrapping<u32>,
    /// The guest's receive buffer, how much of it it has consumed, and how
    /// much we have sent into it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    sent_cnt: Wrapping<u32>,
    credit_requested: bool,
    pub deadline: Option<Instant>,
}

impl Connection {
    fn new(stream: UnixStream, token: u64, key: Key, guest_cid: u64, state: State) -> Self {
        Self {
            stream,
            token,
            key,
            guest_cid,
            state,
            owed: 0,
            queued: false,
            readable: false,
            host_eof: false,
            host_hung_up: false,
            host_write_shut: false,
            peer_shutdown: 0,
            to_host: VecDeque::new(),
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            sent_cnt: Wrapping(0),
            credit_requested: false,
            deadline: None,
        }
    }

    /// A host client asked for guest port `key.peer_port`: a REQUEST is owed.
    pub fn host_initiated(stream: UnixStream, token: u64, key: Key, guest_cid: u64) -> Self {
        let mut conn = Self::new(stream, token, key, guest_cid, State::Connecting);
        conn.owed = owed::REQUEST;
        conn.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        conn
    }

    /// The guest's REQUEST reached a host socket: a RESPONSE is owed.
    pub fn guest_initiated(
        stream: UnixStream,
        token: u64,
        request: &Header,
        guest_cid: u64,
    ) -> Self {
        let key = Key::of_guest_packet(request);
        let mut conn = Self::new(stream, token, key, guest_cid, State::Established);
        conn.owed = owed::RESPONSE;
        conn.update_peer_credit(request);
        conn
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// How many more bytes the guest can take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.sent_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// How much room the guest believes we have left.
    fn credit_told(&self) -> u32 {
        BUF_ALLOC.saturating_sub((self.recv_cnt - self.fwd_cnt_told).0)
    }

    fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Every packet we send carries our credit, so the guest's view of it
    /// is current again.
    fn header(&mut self, op: Op, flags: u32) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Whether [`Connection::next_packet`] has something to give.
    pub fn has_work(&self) -> bool {
        self.owed != 0 || self.wants_to_read()
    }

    fn wants_to_read(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && (self.peer_credit() > 0 || !self.credit_requested)
    }

    /// A packet from the guest for this connection (not RST or REQUEST,
    /// which the muxer handles).
    pub fn on_guest_packet(&mut self, header: &Header, payload: &[u8]) -> Fate {
        self.update_peer_credit(header);
        match Op::from_u16(header.op) {
            Some(Op::Response) if self.state == State::Connecting => {
                self.state = State::Established;
                self.deadline = None;
                let line = format!("OK {}\n", self.key.local_port);
                // The client has read nothing from this fresh socket yet,
                // so a short line fits its buffer whole or not at all.
                match self.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => Fate::Keep,
                    _ => Fate::Kill,
                }
            }
            Some(Op::Rw) => {
                if self.state != State::Established || self.peer_shutdown & SHUTDOWN_SEND != 0 {
                    return Fate::Kill;
                }
                if self.to_host.len() + payload.len() > BUF_ALLOC as usize {
                    // The guest wrote past the credit we gave it.
                    return Fate::Kill;
                }
                self.to_host.extend(payload);
                self.recv_cnt += payload.len() as u32;
                self.flush()
            }
            Some(Op::Shutdown) => {
                self.peer_shutdown |= header.flags & SHUTDOWN_BOTH;
                if self.peer_shutdown == SHUTDOWN_BOTH && self.deadline.is_none() {
                    // A host socket that never drains must not keep the
                    // guest waiting for its RST.
                    self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                self.flush()
            }
            Some(Op::CreditUpdate) => Fate::Keep,
            Some(Op::CreditRequest) => {
                self.owed |= owed::CREDIT_UPDATE;
                Fate::Keep
            }
            _ => Fate::Kill,
        }
    }

    /// The host socket became ready.
    pub fn on_host_event(&mut self, events: EventSet) -> Fate {
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            self.readable = true;
        }
        if events.contains(EventSet::HANG_UP) {
            self.host_hung_up = true;
        }
        if events.contains(EventSet::OUT) {
            return self.flush();
        }
        Fate::Keep
    }

    /// Writes what the host socket takes of the guest's bytes, then acts on
    /// the guest's SHUTDOWN once everything before it is through.
    fn flush(&mut self) -> Fate {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Fate::Kill,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += n as u32;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Fate::Kill,
            }
        }
        if self.fwd_cnt != self.fwd_cnt_told && self.credit_told() < CREDIT_UPDATE_THRESHOLD {
            self.owed |= owed::CREDIT_UPDATE;
        }
        if !self.to_host.is_empty() {
            return Fate::Keep;
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            // The guest closed its socket and waits for our RST.
            return Fate::Kill;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            // The host reads EOF; an already closed socket has nothing to lose.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Fate::Keep
    }

    /// The next packet for the guest, if any: owed control packets first,
    /// then host bytes as far as the guest's credit and `max_payload` allow.
    pub fn next_packet(&mut self, max_payload: u32) -> Next {
        if self.owed & owed::REQUEST != 0 {
            self.owed &= !owed::REQUEST;
            return Next::Packet(self.header(Op::Request, 0), Vec::new());
        }
        if self.owed & owed::RESPONSE != 0 {
            self.owed &= !owed::RESPONSE;
            return Next::Packet(self.header(Op::Response, 0), Vec::new());
        }
        if self.wants_to_read() {
            match self.read_host(max_payload) {
                Next::Nothing => {}
                other => return other,
            }
        }
        if self.owed & owed::SHUTDOWN != 0 {
            self.owed &= !owed::SHUTDOWN;
            let mut flags = SHUTDOWN_SEND;
            if self.host_hung_up {
                flags |= SHUTDOWN_RCV;
                self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            }
            // Credit owed goes along with it.
            self.owed &= !owed::CREDIT_UPDATE;
            return Next::Packet(self.header(Op::Shutdown, flags), Vec::new());
        }
        if self.owed & owed::CREDIT_UPDATE != 0 {
            self.owed &= !owed::CREDIT_UPDATE;
            return Next::Packet(self.header(Op::CreditUpdate, 0), Vec::new());
        }
        if self.owed & owed::CREDIT_REQUEST != 0 {
            self.owed &= !owed::CREDIT_REQUEST;
            return Next::Packet(self.header(Op::CreditRequest, 0), Vec::new());
        }
        Next::Nothing
    }

    fn read_host(&mut self, max_payload: u32) -> Next {
        let credit = self.peer_credit();
        if credit == 0 {
            // Host bytes wait for the guest to make room; ask it to say
            // when it has, once.
            self.credit_requested = true;
            self.owed |= owed::CREDIT_REQUEST;
            return Next::Nothing;
        }
        let mut bytes = vec![0u8; credit.min(max_payload) as usize];
        loop {
            match self.stream.read(&mut bytes) {
                Ok(0) => {
                    self.host_eof = true;
                    self.readable = false;
                    self.owed |= owed::SHUTDOWN;
                    return Next::Nothing;
                }
                Ok(n) => {
                    bytes.truncate(n);
                    self.sent_cnt += n as u32;
                    return Next::Packet(self.header(Op::Rw, 0), bytes);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Next::Nothing;
                }
                Err(_) => return Next::Kill,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;

    fn guest_header(op: Op, buf_alloc: u32, fwd_cnt: u32, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 5000,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn established(buf_alloc: u32) -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        let request = guest_header(Op::Request, buf_alloc, 0, 0);
        let mut conn = Connection::guest_initiated(ours, 9, &request, CID);
        match conn.next_packet(4096) {
            Next::Packet(header, _) => assert_eq!(header.op, Op::Response as u16),
            other => panic!("{other:?}"),
        }
        (conn, theirs)
    }

    fn rw(conn: &mut Connection, max: u32) -> Vec<u8> {
        match conn.next_packet(max) {
            Next::Packet(header, payload) => {
                assert_eq!(header.op, Op::Rw as u16);
                assert_eq!(header.buf_alloc, BUF_ALLOC);
                payload
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn host_bytes_respect_the_guest_credit_and_ask_for_more() {
        let (mut conn, mut host) = established(10);
        host.write_all(b"0123456789abcdef").expect("write");
        assert_eq!(conn.on_host_event(EventSet::IN), Fate::Keep);
        assert_eq!(rw(&mut conn, 4096), b"0123456789");
        assert_eq!(conn.peer_credit(), 0);
        // Out of credit: one CREDIT_REQUEST, then silence until credit comes.
        match conn.next_packet(4096) {
            Next::Packet(header, _) => assert_eq!(header.op, Op::CreditRequest as u16),
            other => panic!("{other:?}"),
        }
        assert!(!conn.has_work());
        let update = guest_header(Op::CreditUpdate, 10, 4, 0);
        assert_eq!(conn.on_guest_packet(&update, &[]), Fate::Keep);
        assert_eq!(conn.peer_credit(), 4);
        assert!(conn.has_work());
        assert_eq!(rw(&mut conn, 3), b"abc");
        assert_eq!(rw(&mut conn, 4096), b"d");
    }

    #[test]
    fn guest_bytes_are_forwarded_and_counted() {
        let (mut conn, mut host) = established(4096);
        let packet = guest_header(Op::Rw, 4096, 0, 5);
        assert_eq!(conn.on_guest_packet(&packet, b"hello"), Fate::Keep);
        let mut got = [0u8; 5];
        host.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello");
        assert_eq!(conn.fwd_cnt.0, 5);
        // Plenty of room left: no unasked-for update.
        assert!(!conn.has_work());
        // Asked for, it comes, with our fwd_cnt.
        let request = guest_header(Op::CreditRequest, 4096, 0, 0);
        assert_eq!(conn.on_guest_packet(&request, &[]), Fate::Keep);
        match conn.next_packet(4096) {
            Next::Packet(header, _) => {
                assert_eq!(header.op, Op::CreditUpdate as u16);
                assert_eq!((header.fwd_cnt, header.buf_alloc), (5, BUF_ALLOC));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stalling_guest_gets_a_credit_update_and_overruns_are_killed() {
        let (mut conn, _host) = established(4096);
        // The guest fills what we advertised without hearing from us: it
        // would stall, so we tell it what we forwarded.
        let chunk = vec![7u8; 32 * 1024];
        for _ in 0..7 {
            let packet = guest_header(Op::Rw, 4096, 0, chunk.len() as u32);
            assert_eq!(conn.on_guest_packet(&packet, &chunk), Fate::Keep);
        }
        assert!(conn.fwd_cnt.0 > 0, "the host socket took nothing");
        match conn.next_packet(4096) {
            Next::Packet(header, _) => {
                assert_eq!(header.op, Op::CreditUpdate as u16);
                assert_eq!(header.fwd_cnt, conn.fwd_cnt.0);
            }
            other => panic!("{other:?}"),
        }
        let (mut conn, _host) = established(4096);
        let packet = guest_header(Op::Rw, 4096, 0, BUF_ALLOC + 1);
        assert_eq!(
            conn.on_guest_packet(&packet, &vec![0u8; BUF_ALLOC as usize + 1]),
            Fate::Kill,
            "past the advertised buf_alloc"
        );
    }

    #[test]
    fn host_eof_becomes_a_shutdown_and_guest_shutdown_closes() {
        let (mut conn, mut host) = established(4096);
        host.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(
            conn.on_host_event(EventSet::IN | EventSet::READ_HANG_UP),
            Fate::Keep
        );
        match conn.next_packet(4096) {
            Next::Packet(header, _) => {
                assert_eq!(header.op, Op::Shutdown as u16);
                assert_eq!(header.flags, SHUTDOWN_SEND);
            }
            other => panic!("{other:?}"),
        }
        // The guest may still write; then it closes both ways.
        let packet = guest_header(Op::Rw, 4096, 0, 3);
        assert_eq!(conn.on_guest_packet(&packet, b"bye"), Fate::Keep);
        let mut shutdown = guest_header(Op::Shutdown, 4096, 0, 0);
        shutdown.flags = SHUTDOWN_BOTH;
        assert_eq!(conn.on_guest_packet(&shutdown, &[]), Fate::Kill);
        let mut got = [0u8; 3];
        host.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"bye");
    }
}
