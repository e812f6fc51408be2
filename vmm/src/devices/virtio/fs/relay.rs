//! Turns the back end's "used buffers" eventfds into transport interrupts.
//!
//! The back end cannot raise the interrupt itself: the guest's virtio-mmio
//! driver ignores an interrupt unless the transport's status register says
//! why, so every call has to go through [`Interrupt::signal`]. The thread
//! also watches the vhost-user socket, so that a back end that dies is
//! noticed even while the guest is idle.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::FsError;
use crate::devices::virtio::Interrupt;

const STOP: u64 = u64::MAX;
const HANGUP: u64 = u64::MAX - 1;

/// A running relay thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Relay {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relays every eventfd in `calls` to `interrupt` until stopped. When
    /// `socket` (a duplicate of the vhost-user connection) hangs up,
    /// `backend_gone` is set.
    pub fn spawn(
        calls: Vec<EventFd>,
        socket: UnixStream,
        interrupt: Interrupt,
        backend_gone: Arc<AtomicBool>,
    ) -> Result<Self, FsError> {
        let relay_error = |source| FsError::Relay { source };
        let stop = EventFd::new(EFD_NONBLOCK).map_err(relay_error)?;
        let epoll = Epoll::new().map_err(relay_error)?;
        let add = |fd: i32, events: EventSet, token: u64| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
                .map_err(relay_error)
        };
        add(stop.as_raw_fd(), EventSet::IN, STOP)?;
        add(socket.as_raw_fd(), EventSet::READ_HANG_UP, HANGUP)?;
        for (token, call) in calls.iter().enumerate() {
            add(call.as_raw_fd(), EventSet::IN, token as u64)?;
        }
        let thread = std::thread::Builder::new()
            .name("virtio-fs-relay".into())
            .spawn(move || run(&epoll, &calls, &socket, &interrupt, &backend_gone))
            .map_err(relay_error)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Err(err) = self.stop.write(1) {
            // Joining now would wait forever on a thread that was never told.
            tracing::error!(%err, "virtio-fs: cannot stop the interrupt relay; leaving it running");
            return;
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("virtio-fs: the interrupt relay panicked");
        }
    }
}

fn run(
    epoll: &Epoll,
    calls: &[EventFd],
    socket: &UnixStream,
    interrupt: &Interrupt,
    backend_gone: &AtomicBool,
) {
    let mut events = vec![EpollEvent::default(); calls.len() + 2];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(ready) => ready,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::error!(%err, "virtio-fs: the interrupt relay cannot wait; the guest gets no more completions");
                return;
            }
        };
        for event in &events[..ready] {
            match event.data() {
                STOP => return,
                HANGUP => {
                    // Said once per back end, not once per relay thread.
                    if !backend_gone.swap(true, Ordering::SeqCst) {
                        tracing::error!(
                            "virtio-fs: the vhost-user back end (virtiofsd) hung up; the guest's file system no longer answers"
                        );
                    }
                    // Level-triggered: it would fire again at once.
                    let _ = epoll.ctl(
                        ControlOperation::Delete,
                        socket.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
                token => {
                    if let Some(call) = calls.get(token as usize) {
                        // Drain the counter; one interrupt covers every call
                        // since the last one.
                        let _ = call.read();
                        interrupt.signal(Interrupt::USED_RING);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_call_raises_the_used_ring_interrupt_and_a_hangup_is_noticed() {
        let line = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let line_reader = line.try_clone().expect("clone");
        let interrupt = Interrupt::new(line);
        let calls: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let call_1 = calls[1].try_clone().expect("clone");
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let gone = Arc::new(AtomicBool::new(false));
        let relay = Relay::spawn(calls, ours, interrupt.clone(), Arc::clone(&gone)).expect("relay");

        call_1.write(1).expect("call");
        wait_for("the interrupt", || {
            interrupt.status() == Interrupt::USED_RING
        });
        assert_eq!(line_reader.read().expect("line raised"), 1);
        assert!(!gone.load(Ordering::SeqCst));

        drop(theirs);
        wait_for("the hangup", || gone.load(Ordering::SeqCst));
        // Stops and joins, or the test hangs here.
        drop(relay);
    }
}
