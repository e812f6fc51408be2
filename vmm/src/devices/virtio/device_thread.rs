//! A device's own thread, woken through two eventfds: the vCPU thread only
//! writes the kick on a queue notification, so it never waits on the host
//! side of a device (a socket, a tap), and the stop ends the thread when
//! the driver resets the device or the VMM drops it.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The epoll tokens of the two eventfds; a device numbers its own fds
/// from 2.
pub const KICK_TOKEN: u64 = 0;
pub const STOP_TOKEN: u64 = 1;

/// The kick and stop eventfds. The device thread's loop holds one copy
/// (its epoll watches them), the [`DeviceThread`] another.
#[derive(Debug)]
pub struct Wakeups {
    kick: EventFd,
    stop: EventFd,
}

impl Wakeups {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            kick: EventFd::new(EFD_NONBLOCK)?,
            stop: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The same two eventfds, for the other side.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            kick: self.kick.try_clone()?,
            stop: self.stop.try_clone()?,
        })
    }

    /// Each fd with its token, for the thread's epoll.
    pub fn fds(&self) -> [(RawFd, u64); 2] {
        [
            (self.kick.as_raw_fd(), KICK_TOKEN),
            (self.stop.as_raw_fd(), STOP_TOKEN),
        ]
    }

    /// Consumes a kick; the loop has woken, which is all it meant.
    pub fn take_kick(&self) {
        let _ = self.kick.read();
    }

    /// Whether a stop was asked for. The loop checks after every round as
    /// well as on [`STOP_TOKEN`]: with more fds ready than its event buffer
    /// holds, a round may not report the stop.
    pub fn stopped(&self) -> bool {
        self.stop.read().is_ok()
    }
}

/// The running thread, and the eventfds that drive it; dropping it stops
/// and joins the thread.
#[derive(Debug)]
pub struct DeviceThread {
    /// The device, in the log line of a thread that panicked.
    device: &'static str,
    thread: Option<JoinHandle<()>>,
    wakeups: Wakeups,
}

impl DeviceThread {
    /// Runs `body` on a thread called `name`; `wakeups` are the copies this
    /// handle writes to.
    pub fn spawn(
        device: &'static str,
        name: String,
        wakeups: Wakeups,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new().name(name).spawn(body)?;
        Ok(Self {
            device,
            thread: Some(thread),
            wakeups,
        })
    }

    pub fn kick(&self) {
        // A full counter means a wake-up is pending already.
        let _ = self.wakeups.kick.write(1);
    }

    /// Stops the thread and waits for it; whatever it owns (connections,
    /// queues) goes with it.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        let _ = self.wakeups.stop.write(1);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("{}: the device thread panicked", self.device);
        }
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.join();
    }
}
