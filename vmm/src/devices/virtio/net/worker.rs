//! The device's own thread: an epoll loop over the queue kick, the stop
//! signal and the tap. The vCPU thread only writes the kick eventfd.
//!
//! The tap is watched only while a guest rx buffer waits for a frame: with
//! no buffer to fill, a readable tap would wake the loop for nothing, over
//! and over. The guest's next kick (it posted buffers) watches it again.
//! Frames the guest has no room for wait in the tap's queue, and the kernel
//! drops them once that is full; nothing here ever blocks.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::NetError;
use super::frame::{self, HEADER_LEN, MIN_FRAME, RxBuffer, SCRATCH_LEN};
use super::tap::Tap;
use crate::devices::bus::RateLimit;
use crate::devices::virtio::Interrupt;
use crate::devices::virtio::device_thread::{DeviceThread, KICK_TOKEN, STOP_TOKEN, Wakeups};
use crate::memory::GuestMemory;

const TAP_TOKEN: u64 = 2;

pub struct Worker {
    memory: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Interrupt,
    tap: Arc<Tap>,
    epoll: Epoll,
    wakeups: Wakeups,
    /// An rx buffer popped from the queue, waiting for a frame.
    rx_buffer: Option<RxBuffer>,
    /// A header and a frame of the MTU: smaller rx buffers are refused.
    min_rx_buffer: usize,
    tap_watched: bool,
    /// The tap failed a read with something other than "nothing yet" (its
    /// interface is gone): it is not watched again.
    tap_failed: bool,
    /// One frame behind its header, in either direction.
    scratch: Box<[u8; SCRATCH_LEN]>,
    bad_chain: RateLimit,
    dropped: RateLimit,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("tap", &self.tap.name())
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        memory: GuestMemory,
        rx: Queue,
        tx: Queue,
        interrupt: Interrupt,
        tap: Arc<Tap>,
        min_rx_buffer: usize,
    ) -> Result<Self, NetError> {
        let wakeups = Wakeups::new().map_err(NetError::EventFd)?;
        let epoll = Epoll::new().map_err(NetError::Epoll)?;
        for (fd, token) in wakeups.fds() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(NetError::Epoll)?;
        }
        Ok(Self {
            memory,
            rx,
            tx,
            interrupt,
            tap,
            epoll,
            wakeups,
            rx_buffer: None,
            min_rx_buffer,
            tap_watched: false,
            tap_failed: false,
            scratch: vec![0u8; SCRATCH_LEN]
                .into_boxed_slice()
                .try_into()
                .expect("SCRATCH_LEN bytes"),
            bad_chain: RateLimit::default(),
            dropped: RateLimit::default(),
        })
    }

    pub fn spawn(self, name: String) -> Result<DeviceThread, NetError> {
        let wakeups = self.wakeups.try_clone().map_err(NetError::EventFd)?;
        DeviceThread::spawn("net", name, wakeups, move || self.run()).map_err(NetError::Thread)
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            // Queues may hold work from before activation, hence first.
            self.pump();
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::error!(%err, "net: epoll_wait failed; the device stops");
                    return;
                }
            };
            for event in &events[..count] {
                match event.data() {
                    STOP_TOKEN => return,
                    KICK_TOKEN => self.wakeups.take_kick(),
                    // Level-triggered: the pump reads until it would block.
                    _ => {}
                }
            }
            if self.wakeups.stopped() {
                return;
            }
        }
    }

    /// Sends everything on tx, fills rx buffers while the tap has frames,
    /// then interrupts the guest once if it has used buffers to look at.
    fn pump(&mut self) {
        let mut used = self.drain_tx();
        used |= self.fill_rx();
        if used {
            self.interrupt.signal(Interrupt::USED_RING);
        }
    }

    fn log_bad_chain(&mut self, queue: &str, err: &NetError) {
        if self.bad_chain.allow() {
            tracing::warn!(tap = self.tap.name(), queue, %err, "net: a malformed descriptor chain");
        }
    }

    fn log_drop(&mut self, direction: &str, reason: &dyn std::fmt::Display) {
        if self.dropped.allow() {
            tracing::warn!(tap = self.tap.name(), direction, %reason, "net: a frame dropped");
        }
    }

    fn give_back(queue: &mut Queue, memory: &GuestMemory, head: u16, len: u32) {
        if let Err(err) = queue.add_used(memory, head, len) {
            tracing::debug!(%err, "net: cannot return a buffer");
        }
    }

    /// Writes the guest's frames to the tap. A frame the tap refuses is
    /// dropped: waiting for room would stall the guest's other frames, and
    /// the kernel's own queues drop the same way.
    fn drain_tx(&mut self) -> bool {
        let mut used = false;
        while self.tx.ready() {
            let Some(chain) = self.tx.pop_descriptor_chain(&self.memory) else {
                break;
            };
            let head = chain.head_index();
            match frame::read_tx(&self.memory, &self.tx, head, &mut self.scratch) {
                Ok(len) => {
                    // Nothing was negotiated that the header could ask the
                    // tap for, so it goes out plain whatever the guest put.
                    self.scratch[..HEADER_LEN].fill(0);
                    match self.tap.write(&self.scratch[..len]) {
                        Ok(written) if written == len => {}
                        Ok(written) => {
                            self.log_drop("tx", &format!("{written} of {len} bytes written"));
                        }
                        Err(err) => self.log_drop("tx", &err),
                    }
                }
                Err(err) => self.log_bad_chain("tx", &err),
            }
            Self::give_back(&mut self.tx, &self.memory, head, 0);
            used = true;
        }
        used
    }

    /// The next well-formed rx buffer; malformed ones go back empty.
    fn next_rx_buffer(&mut self, used: &mut bool) -> Option<RxBuffer> {
        if let Some(buffer) = self.rx_buffer.take() {
            return Some(buffer);
        }
        while self.rx.ready() {
            let chain = self.rx.pop_descriptor_chain(&self.memory)?;
            let head = chain.head_index();
            match RxBuffer::new(&self.memory, &self.rx, head, self.min_rx_buffer) {
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

    /// Moves frames from the tap into rx buffers until one side runs out.
    fn fill_rx(&mut self) -> bool {
        let mut used = false;
        while !self.tap_failed {
            let Some(buffer) = self.next_rx_buffer(&mut used) else {
                self.watch_tap(false);
                break;
            };
            let len = match self.tap.read(&mut self.scratch[..]) {
                Ok(len) => len,
                Err(err) => {
                    self.rx_buffer = Some(buffer);
                    match err.kind() {
                        std::io::ErrorKind::WouldBlock => {
                            self.watch_tap(true);
                            break;
                        }
                        std::io::ErrorKind::Interrupted => continue,
                        _ => {
                            tracing::error!(tap = self.tap.name(), %err, "net: reading the tap failed; the guest receives no more");
                            self.tap_failed = true;
                            self.watch_tap(false);
                            break;
                        }
                    }
                }
            };
            let frame = len.saturating_sub(HEADER_LEN);
            let problem = if !(MIN_FRAME..=frame::MAX_FRAME).contains(&frame) {
                Some(format!("a {frame}-byte frame from the tap"))
            } else if frame::needs_offload(&self.scratch[..HEADER_LEN]) {
                Some("the tap asks for a checksum or segmentation offload".into())
            } else if len > buffer.capacity() {
                Some(format!(
                    "a {frame}-byte frame where the guest's buffer holds {}",
                    buffer.capacity() - HEADER_LEN
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                // The buffer waits for the next frame.
                self.log_drop("rx", &problem);
                self.rx_buffer = Some(buffer);
                continue;
            }
            self.scratch[..HEADER_LEN].copy_from_slice(&frame::rx_header());
            let written = match buffer.write(&self.memory, &self.scratch[..len]) {
                Ok(written) => written,
                Err(err) => {
                    // Checked when popped, so only a shrunk memory map could
                    // get here; the frame is lost either way.
                    self.log_drop("rx", &err);
                    0
                }
            };
            Self::give_back(&mut self.rx, &self.memory, buffer.head(), written);
            used = true;
        }
        used
    }

    fn watch_tap(&mut self, watch: bool) {
        if watch == self.tap_watched {
            return;
        }
        // Deleted rather than given an empty event set: epoll reports
        // EPOLLERR regardless, and a tap whose interface is gone has it
        // for good.
        let (operation, events) = if watch {
            (ControlOperation::Add, EventSet::IN)
        } else {
            (ControlOperation::Delete, EventSet::empty())
        };
        match self.epoll.ctl(
            operation,
            self.tap.as_raw_fd(),
            EpollEvent::new(events, TAP_TOKEN),
        ) {
            Ok(()) => self.tap_watched = watch,
            Err(err) => tracing::error!(tap = self.tap.name(), %err, "net: epoll_ctl on the tap"),
        }
    }
}
