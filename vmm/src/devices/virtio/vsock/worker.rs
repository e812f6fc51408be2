//! The device's own thread: an epoll loop over the queue kick, the stop
//! signal, the Unix listener and every host socket. The vCPU thread only
//! writes the kick eventfd, so it never waits on a host socket.

use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{EpollEvent, EventSet};

use super::VsockError;
use super::muxer::{LISTENER_TOKEN, Muxer};
use super::packet::{RxBuffer, TxPacket};
use crate::devices::bus::RateLimit;
use crate::devices::virtio::Interrupt;
use crate::devices::virtio::device_thread::{DeviceThread, KICK_TOKEN, STOP_TOKEN, Wakeups};
use crate::memory::GuestMemory;

pub struct Worker {
    memory: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Interrupt,
    muxer: Muxer,
    wakeups: Wakeups,
    /// The one rx buffer popped for a packet that then did not come (the
    /// connection had nothing to send after all). Buffers are popped only
    /// while a packet waits, and no other is popped while this one is
    /// held, so the guest cannot make the device hold more than one,
    /// whatever it offers and however often it offers the same head.
    rx_buffer: Option<RxBuffer>,
    bad_input: RateLimit,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("muxer", &self.muxer)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        memory: GuestMemory,
        rx: Queue,
        tx: Queue,
        interrupt: Interrupt,
        muxer: Muxer,
    ) -> Result<Self, VsockError> {
        let wakeups = Wakeups::new().map_err(VsockError::EventFd)?;
        for (fd, token) in wakeups.fds() {
            muxer
                .watch(fd, token, EventSet::IN)
                .map_err(VsockError::Epoll)?;
        }
        Ok(Self {
            memory,
            rx,
            tx,
            interrupt,
            muxer,
            wakeups,
            rx_buffer: None,
            bad_input: RateLimit::default(),
        })
    }

    pub fn spawn(self) -> Result<DeviceThread, VsockError> {
        let wakeups = self.wakeups.try_clone().map_err(VsockError::EventFd)?;
        DeviceThread::spawn("vsock", "hull-vsock".into(), wakeups, move || self.run())
            .map_err(VsockError::Thread)
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        // Queues may hold work from before activation.
        self.pump();
        loop {
            let timeout_ms = self.muxer.timeout_ms();
            if !self.turn(&mut events, timeout_ms) {
                return;
            }
        }
    }

    /// One turn of the event loop: waits up to `timeout_ms` for host
    /// sockets or the vCPU thread, handles what arrived and moves packets.
    /// False once the device is to stop. The fuzz targets turn it with a
    /// zero timeout, so they run exactly what the device thread runs.
    pub fn turn(&mut self, events: &mut [EpollEvent], timeout_ms: i32) -> bool {
        let count = match self.muxer.epoll().wait(timeout_ms, events) {
            Ok(count) => count,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => return true,
            Err(err) => {
                tracing::error!(%err, "vsock: epoll_wait failed; the device stops");
                return false;
            }
        };
        for event in &events[..count] {
            match event.data() {
                STOP_TOKEN => return false,
                KICK_TOKEN => self.wakeups.take_kick(),
                LISTENER_TOKEN => self.muxer.accept_all(),
                token => self.muxer.on_socket_event(token, event.event_set()),
            }
        }
        if self.wakeups.stopped() {
            return false;
        }
        self.muxer.expire(Instant::now());
        self.pump();
        true
    }

    /// Moves packets both ways until neither queue can make progress, then
    /// interrupts the guest once if it has used buffers to look at.
    fn pump(&mut self) {
        let mut used = false;
        loop {
            let mut progress = self.fill_rx(&mut used);
            if !self.muxer.backlogged() {
                progress |= self.drain_tx(&mut used);
            }
            if !progress {
                break;
            }
        }
        if used {
            self.interrupt.signal(Interrupt::USED_RING);
        }
    }

    fn log_bad_chain(&mut self, queue: &str, err: &VsockError) {
        if self.bad_input.allow() {
            tracing::warn!(queue, %err, "vsock: a malformed descriptor chain");
        }
    }

    fn give_back(queue: &mut Queue, memory: &GuestMemory, head: u16, len: u32) {
        if let Err(err) = queue.add_used(memory, head, len) {
            tracing::debug!(%err, "vsock: cannot return a buffer");
        }
    }

    /// Takes the guest's packets off the tx queue.
    fn drain_tx(&mut self, used: &mut bool) -> bool {
        let mut progress = false;
        while self.tx.ready() && !self.muxer.backlogged() {
            let Some(chain) = self.tx.pop_descriptor_chain(&self.memory) else {
                break;
            };
            let head = chain.head_index();
            match TxPacket::read(&self.memory, &self.tx, head) {
                Ok(packet) => self.muxer.on_guest_packet(packet),
                Err(err) => self.log_bad_chain("tx", &err),
            }
            Self::give_back(&mut self.tx, &self.memory, head, 0);
            *used = true;
            progress = true;
        }
        progress
    }

    /// The held rx buffer, or the next well-formed one the guest offers;
    /// malformed ones go back empty.
    fn next_rx_buffer(&mut self, used: &mut bool) -> Option<RxBuffer> {
        if let Some(buffer) = self.rx_buffer.take() {
            return Some(buffer);
        }
        while self.rx.ready() {
            let head = self.rx.pop_descriptor_chain(&self.memory)?.head_index();
            match RxBuffer::new(&self.memory, &self.rx, head) {
                Ok(buffer) => return Some(buffer),
                Err(err) => {
                    self.log_bad_chain("rx", &err);
                    Self::give_back(&mut self.rx, &self.memory, head, 0);
                    *used = true;
                }
            }
        }
        None
    }

    /// Fills rx buffers with whatever the muxer has, taking a buffer from
    /// the guest only once a packet waits for it.
    fn fill_rx(&mut self, used: &mut bool) -> bool {
        let mut progress = false;
        while self.muxer.has_packets() {
            let Some(buffer) = self.next_rx_buffer(used) else {
                break;
            };
            let Some((header, payload)) = self.muxer.next_packet(buffer.max_payload()) else {
                self.rx_buffer = Some(buffer);
                break;
            };
            let len = match buffer.write(&self.memory, &header, &payload) {
                Ok(len) => len,
                Err(err) => {
                    // Checked when popped, so only a shrunk memory map
                    // could get here; the packet is lost either way.
                    tracing::warn!(%err, "vsock: writing an rx packet");
                    0
                }
            };
            Self::give_back(&mut self.rx, &self.memory, buffer.head(), len);
            *used = true;
            progress = true;
        }
        progress
    }
}
