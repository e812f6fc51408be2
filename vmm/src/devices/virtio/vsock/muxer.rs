//! The hybrid back end: host clients arrive on the Unix listener and say
//! `CONNECT <port>\n`; guest REQUESTs to host port P go to `<uds_path>_P`.
//! The muxer owns every host socket, routes the guest's packets to their
//! connections and decides what goes into the next rx buffer.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, Fate, Key, Next};
use super::packet::{Header, Op, TYPE_STREAM, TxPacket};
use super::{HOST_CID, VsockError};
use crate::devices::bus::RateLimit;

/// At most this many host sockets (connections and clients yet to send
/// their CONNECT line) at a time.
pub const MAX_CONNECTIONS: usize = 1024;
/// Past this many packets not tied to a live connection (mostly RSTs), the
/// tx queue waits for the guest to take them.
const MAX_STANDALONE: usize = 256;
/// `CONNECT 4294967295\n` is 19 bytes; a longer line is not one.
const MAX_CONNECT_LINE: usize = 32;
/// How long a host client has to send its CONNECT line.
const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Host-initiated connections take local ports from here up, clear of the
/// ports services listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Epoll tokens below this belong to the worker (kick, stop, listener).
pub const FIRST_SOCKET_TOKEN: u64 = 16;
pub const LISTENER_TOKEN: u64 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectLineError {
    #[error("not a CONNECT line")]
    Garbage,
    #[error("longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    #[error("bad port")]
    BadPort,
}

/// Parses `CONNECT <port>` (the line without its `\n`; a `\r` before it is
/// tolerated).
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnectLineError> {
    if line.len() >= MAX_CONNECT_LINE {
        return Err(ConnectLineError::TooLong);
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let port = line
        .strip_prefix(b"CONNECT ")
        .ok_or(ConnectLineError::Garbage)?;
    if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return Err(ConnectLineError::BadPort);
    }
    std::str::from_utf8(port)
        .ok()
        .and_then(|port| port.parse().ok())
        .ok_or(ConnectLineError::BadPort)
}

/// A host client that has not sent its whole CONNECT line yet.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    since: Instant,
}

#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Connection>,
    /// Epoll token → connection.
    tokens: HashMap<u64, Key>,
    clients: HashMap<u64, Client>,
    next_token: u64,
    next_local_port: u32,
    standalone: VecDeque<Header>,
    /// Connections with something for the guest, served round robin.
    ready: VecDeque<Key>,
    bad_input: RateLimit,
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
    ) -> Result<Self, VsockError> {
        let epoll = Epoll::new().map_err(VsockError::Epoll)?;
        let muxer = Self {
            guest_cid,
            uds_path,
            listener,
            epoll,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            clients: HashMap::new(),
            next_token: FIRST_SOCKET_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            standalone: VecDeque::new(),
            ready: VecDeque::new(),
            bad_input: RateLimit::default(),
        };
        // Level-triggered: clients past the cap are accepted and closed, so
        // the backlog always drains.
        muxer
            .watch(muxer.listener.as_raw_fd(), LISTENER_TOKEN, EventSet::IN)
            .map_err(VsockError::Epoll)?;
        Ok(muxer)
    }

    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    pub fn watch(&self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    fn unwatch(&self, fd: RawFd) {
        // Closing the fd right after would drop it from the set anyway.
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    fn reject(&mut self, what: &str, header: Option<&Header>) {
        if self.bad_input.allow() {
            tracing::warn!(?header, "vsock: {what}");
        }
    }

    fn socket_count(&self) -> usize {
        self.conns.len() + self.clients.len()
    }

    /// Edge-triggered, so a socket wakes the loop only when something
    /// changes; each connection remembers what it was told.
    fn watch_socket(&mut self, fd: RawFd) -> std::io::Result<u64> {
        let token = self.next_token;
        self.next_token += 1;
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.watch(fd, token, events)?;
        Ok(token)
    }

    pub fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    tracing::warn!(%err, "vsock: accepting a host client");
                    return;
                }
            };
            if self.socket_count() >= MAX_CONNECTIONS {
                self.reject("too many connections: a host client is turned away", None);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            match self.watch_socket(stream.as_raw_fd()) {
                Ok(token) => {
                    let since = Instant::now();
                    self.clients.insert(token, Client { stream, since });
                }
                Err(err) => tracing::warn!(%err, "vsock: watching a host client"),
            }
        }
    }

    /// A host socket became ready.
    pub fn on_socket_event(&mut self, token: u64, events: EventSet) {
        if self.clients.contains_key(&token) {
            self.on_client_event(token, events);
        } else if let Some(&key) = self.tokens.get(&token) {
            let fate = match self.conns.get_mut(&key) {
                Some(conn) => conn.on_host_event(events),
                None => return,
            };
            self.settle(key, fate);
        }
    }

    fn on_client_event(&mut self, token: u64, events: EventSet) {
        let Some(client) = self.clients.get(&token) else {
            return;
        };
        // Peek, so bytes the client sends right after its line stay in the
        // socket for the guest.
        let mut line = [0u8; MAX_CONNECT_LINE];
        let fd = client.stream.as_raw_fd();
        let peeked = match socket::recv(fd, &mut line, MsgFlags::MSG_PEEK) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    self.drop_client(token);
                }
                return;
            }
            Err(_) => 0,
        };
        let parsed = match line[..peeked].iter().position(|&b| b == b'\n') {
            Some(end) => parse_connect_line(&line[..end]).map(|port| (port, end + 1)),
            None if peeked == 0 => {
                // The client left before finishing its line.
                self.drop_client(token);
                return;
            }
            None if peeked >= MAX_CONNECT_LINE => Err(ConnectLineError::TooLong),
            None => return,
        };
        match parsed {
            Ok((port, len)) => {
                let client = self.clients.remove(&token).expect("checked above");
                let mut consumed = [0u8; MAX_CONNECT_LINE];
                if socket::recv(fd, &mut consumed[..len], MsgFlags::empty()) != Ok(len) {
                    self.unwatch(fd);
                    return;
                }
                self.connect_guest(client.stream, token, port);
            }
            Err(err) => {
                let message = format!("a host client sent a bad CONNECT line: {err}");
                self.reject(&message, None);
                self.drop_client(token);
            }
        }
    }

    fn drop_client(&mut self, token: u64) {
        if let Some(client) = self.clients.remove(&token) {
            self.unwatch(client.stream.as_raw_fd());
        }
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            // At most MAX_CONNECTIONS ports are taken, so this ends soon.
            if !self.conns.keys().any(|key| key.local_port == port) {
                return port;
            }
        }
    }

    /// A host client asked for guest port `port`: send the guest a REQUEST.
    fn connect_guest(&mut self, stream: UnixStream, token: u64, port: u32) {
        let key = Key {
            local_port: self.allocate_local_port(),
            peer_port: port,
        };
        let conn = Connection::host_initiated(stream, token, key, self.guest_cid);
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.enqueue(key);
    }

    /// Connects to `<uds_path>_<port>` without blocking: a Unix socket
    /// connects at once or fails (EAGAIN when its backlog is full).
    fn connect_host(&self, port: u32) -> std::io::Result<UnixStream> {
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{port}"));
        let address = UnixAddr::new(path.as_os_str())?;
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        socket::connect(fd.as_raw_fd(), &address)?;
        Ok(UnixStream::from(fd))
    }

    /// Routes one packet from the guest's tx queue.
    pub fn on_guest_packet(&mut self, packet: TxPacket) {
        let header = packet.header;
        if header.src_cid != self.guest_cid {
            self.reject("a packet with a forged source CID", Some(&header));
            return;
        }
        let op = Op::from_u16(header.op);
        if op == Some(Op::Rst) {
            // Never answer an RST, or two ends could trade them forever.
            if let Some(conn) = self.conns.remove(&Key::of_guest_packet(&header)) {
                self.forget(&conn);
            }
            return;
        }
        if header.dst_cid != HOST_CID {
            self.reject("a packet for a CID other than the host's", Some(&header));
            self.push_standalone(header.reply(Op::Rst));
            return;
        }
        if header.type_ != TYPE_STREAM || op.is_none() {
            self.reject("a packet of unknown type or op", Some(&header));
            self.kill_or_reset(&header);
            return;
        }
        let key = Key::of_guest_packet(&header);
        if op == Some(Op::Request) {
            if self.conns.contains_key(&key) {
                self.kill(key);
                return;
            }
            self.accept_request(&header);
            return;
        }
        let fate = match self.conns.get_mut(&key) {
            Some(conn) => conn.on_guest_packet(&header, &packet.payload),
            None => {
                self.push_standalone(header.reply(Op::Rst));
                return;
            }
        };
        self.settle(key, fate);
    }

    fn accept_request(&mut self, request: &Header) {
        if self.socket_count() >= MAX_CONNECTIONS {
            self.reject(
                "too many connections: a guest REQUEST is refused",
                Some(request),
            );
            self.push_standalone(request.reply(Op::Rst));
            return;
        }
        let stream = match self.connect_host(request.dst_port) {
            Ok(stream) => stream,
            Err(err) => {
                if self.bad_input.allow() {
                    tracing::debug!(port = request.dst_port, %err, "vsock: no host listener");
                }
                self.push_standalone(request.reply(Op::Rst));
                return;
            }
        };
        let token = match self.watch_socket(stream.as_raw_fd()) {
            Ok(token) => token,
            Err(err) => {
                tracing::warn!(%err, "vsock: watching a host socket");
                self.push_standalone(request.reply(Op::Rst));
                return;
            }
        };
        let conn = Connection::guest_initiated(stream, token, request, self.guest_cid);
        let key = conn.key;
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.enqueue(key);
    }

    fn kill_or_reset(&mut self, header: &Header) {
        let key = Key::of_guest_packet(header);
        if self.conns.contains_key(&key) {
            self.kill(key);
        } else {
            self.push_standalone(header.reply(Op::Rst));
        }
    }

    fn push_standalone(&mut self, mut header: Header) {
        header.src_cid = HOST_CID;
        header.dst_cid = self.guest_cid;
        self.standalone.push_back(header);
    }

    fn settle(&mut self, key: Key, fate: Fate) {
        match fate {
            Fate::Keep => self.enqueue(key),
            Fate::Kill => self.kill(key),
        }
    }

    fn enqueue(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key)
            && conn.has_work()
            && !conn.queued
        {
            conn.queued = true;
            self.ready.push_back(key);
        }
    }

    /// Drops a connection and tells the guest with an RST.
    fn kill(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.forget(&conn);
            let rst = Header {
                src_port: key.local_port,
                dst_port: key.peer_port,
                type_: TYPE_STREAM,
                op: Op::Rst as u16,
                ..Header::default()
            };
            // Bounded by the number of connections, so always kept.
            self.push_standalone(rst);
        }
    }

    fn forget(&mut self, conn: &Connection) {
        self.tokens.remove(&conn.token);
        self.unwatch(conn.stream().as_raw_fd());
    }

    /// Whether the guest should take what is queued before sending more.
    pub fn backlogged(&self) -> bool {
        self.standalone.len() >= MAX_STANDALONE
    }

    pub fn has_packets(&self) -> bool {
        !self.standalone.is_empty() || !self.ready.is_empty()
    }

    /// The next packet for an rx buffer with room for `max_payload` bytes.
    pub fn next_packet(&mut self, max_payload: u32) -> Option<(Header, Vec<u8>)> {
        loop {
            if let Some(header) = self.standalone.pop_front() {
                return Some((header, Vec::new()));
            }
            let key = self.ready.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.next_packet(max_payload) {
                Next::Packet(header, payload) => {
                    self.enqueue(key);
                    return Some((header, payload));
                }
                Next::Nothing => self.enqueue(key),
                Next::Kill => self.kill(key),
            }
        }
    }

    /// Drops connections whose guest did not answer in time, and clients
    /// that never finished their CONNECT line.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<Key> = self
            .conns
            .values()
            .filter(|conn| conn.deadline.is_some_and(|deadline| deadline <= now))
            .map(|conn| conn.key)
            .collect();
        for key in late {
            if self.bad_input.allow() {
                tracing::debug!(?key, "vsock: the guest did not answer in time");
            }
            self.kill(key);
        }
        let idle: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, client)| now.duration_since(client.since) >= CONNECT_LINE_TIMEOUT)
            .map(|(&token, _)| token)
            .collect();
        for token in idle {
            self.drop_client(token);
        }
    }

    /// How long the event loop may sleep (milliseconds, -1 for ever).
    pub fn timeout_ms(&self) -> i32 {
        let timers = !self.clients.is_empty() || self.conns.values().any(|c| c.deadline.is_some());
        if timers { 250 } else { -1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect_line(b"CONNECT 52\r"), Ok(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Ok(u32::MAX));
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967296"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT "),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT +5"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT 5 6"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"connect 5"),
            Err(ConnectLineError::Garbage)
        );
        assert_eq!(
            parse_connect_line(b"\x00\xff"),
            Err(ConnectLineError::Garbage)
        );
        assert_eq!(
            parse_connect_line(&[b'7'; MAX_CONNECT_LINE]),
            Err(ConnectLineError::TooLong)
        );
    }
}
