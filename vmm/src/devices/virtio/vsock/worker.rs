//! The device's own thread: an epoll loop over the queue kick, the stop
//! signal, the Unix listener and every host socket. The vCPU thread only
//! writes the kick eventfd, so it never waits on a host socket.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::VsockError;
use super::muxer::{LISTENER_TOKEN, Muxer};
use super::packet::{RxBuffer, TxPacket};
use crate::devices::bus::RateLimit;
use crate::devices::virtio::Interrupt;
use crate::memory::GuestMemory;

const KICK_TOKEN: u64 = 0;
const STOP_TOKEN: u64 = 1;

/// The running thread, and the eventfds that drive it.
#[derive(Debug)]
pub struct WorkerHandle {
    thread: Option<JoinHandle<()>>,
    kick: EventFd,
    stop: EventFd,
}

impl WorkerHandle {
    pub fn kick(&self) {
        // A full counter means a wake-up is pending already.
        let _ = self.kick.write(1);
    }

    /// Stops the thread and waits for it; its connections close with it.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("vsock: the device thread panicked");
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.join();
    }
}

pub struct Worker {
    memory: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Interrupt,
    muxer: Muxer,
    kick: EventFd,
    stop: EventFd,
    /// rx buffers popped from the queue, waiting for packets.
    rx_buffers: VecDeque<RxBuffer>,
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
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        let (kick, stop) = (eventfd()?, eventfd()?);
        muxer
            .watch(kick.as_raw_fd(), KICK_TOKEN, EventSet::IN)
            .map_err(VsockError::Epoll)?;
        muxer
            .watch(stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)
            .map_err(VsockError::Epoll)?;
        Ok(Self {
            memory,
            rx,
            tx,
            interrupt,
            muxer,
            kick,
            stop,
            rx_buffers: VecDeque::new(),
            bad_input: RateLimit::default(),
        })
    }

    pub fn spawn(self) -> Result<WorkerHandle, VsockError> {
        let kick = self.kick.try_clone().map_err(VsockError::EventFd)?;
        let stop = self.stop.try_clone().map_err(VsockError::EventFd)?;
        let thread = std::thread::Builder::new()
            .name("hull-vsock".into())
            .spawn(move || self.run())
            .map_err(VsockError::Thread)?;
        Ok(WorkerHandle {
            thread: Some(thread),
            kick,
            stop,
        })
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        // Queues may hold work from before activation.
        self.pump();
        loop {
            let count = match self
                .muxer
                .epoll()
                .wait(self.muxer.timeout_ms(), &mut events)
            {
                Ok(count) => count,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::error!(%err, "vsock: epoll_wait failed; the device stops");
                    return;
                }
            };
            for event in &events[..count] {
                match event.data() {
                    STOP_TOKEN => return,
                    KICK_TOKEN => {
                        let _ = self.kick.read();
                    }
                    LISTENER_TOKEN => self.muxer.accept_all(),
                    token => self.muxer.on_socket_event(token, event.event_set()),
                }
            }
            if self.stop.read().is_ok() {
                return;
            }
            self.muxer.expire(Instant::now());
            self.pump();
        }
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
            match TxPacket::read(&self.memory, chain) {
                Ok(packet) => self.muxer.on_guest_packet(packet),
                Err(err) => self.log_bad_chain("tx", &err),
            }
            Self::give_back(&mut self.tx, &self.memory, head, 0);
            *used = true;
            progress = true;
        }
        progress
    }

    /// Fills the guest's rx buffers with whatever the muxer has.
    fn fill_rx(&mut self, used: &mut bool) -> bool {
        while self.rx.ready() {
            let Some(chain) = self.rx.pop_descriptor_chain(&self.memory) else {
                break;
            };
            let head = chain.head_index();
            match RxBuffer::new(&self.memory, chain) {
                Ok(buffer) => self.rx_buffers.push_back(buffer),
                Err(err) => {
                    self.log_bad_chain("rx", &err);
                    Self::give_back(&mut self.rx, &self.memory, head, 0);
                    *used = true;
                }
            }
        }
        let mut progress = false;
        while self.muxer.has_packets() {
            let Some(buffer) = self.rx_buffers.front() else {
                break;
            };
            let Some((header, payload)) = self.muxer.next_packet(buffer.max_payload()) else {
                break;
            };
            let buffer = self.rx_buffers.pop_front().expect("checked above");
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
