//! What the vCPUs should be doing: running, paused or stopping.
//!
//! The control channel and a vCPU that ends the VM change the state; each
//! vCPU thread consults it before entering the guest. A vCPU inside KVM_RUN
//! only notices once it is kicked out with a signal, and a kick can land just
//! before the thread enters KVM_RUN, so requesters kick again until every
//! vCPU has acknowledged.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often an unacknowledged vCPU is kicked again.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Paused,
    Stopping,
}

#[derive(Debug)]
struct Inner {
    desired: RunState,
    vcpus: usize,
    /// vCPUs waiting in [`RunControl::before_entry`] while paused.
    parked: usize,
    /// vCPU threads that have left their run loop.
    exited: usize,
}

/// What a vCPU thread does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    EnterGuest,
    Exit,
}

#[derive(Debug, thiserror::Error)]
pub enum RunControlError {
    #[error("the vCPUs did not {what} within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("the VM is stopping")]
    Stopping,
}

#[derive(Debug)]
pub struct RunControl {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl RunControl {
    pub fn new(vcpus: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                desired: RunState::Running,
                vcpus,
                parked: 0,
                exited: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> RunState {
        self.lock().desired
    }

    /// Called by a vCPU thread before each entry into the guest: blocks
    /// while the VM is paused.
    pub fn before_entry(&self) -> Next {
        let mut inner = self.lock();
        if inner.desired == RunState::Paused {
            inner.parked += 1;
            self.changed.notify_all();
            while inner.desired == RunState::Paused {
                inner = self
                    .changed
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            inner.parked -= 1;
        }
        match inner.desired {
            RunState::Stopping => Next::Exit,
            _ => Next::EnterGuest,
        }
    }

    /// Called by a vCPU thread once it has left its run loop for good.
    pub fn exited(&self) {
        self.lock().exited += 1;
        self.changed.notify_all();
    }

    /// Pauses every vCPU and returns once all of them are out of the guest.
    pub fn pause(&self, kick: impl Fn(), timeout: Duration) -> Result<(), RunControlError> {
        {
            let mut inner = self.lock();
            match inner.desired {
                RunState::Stopping => return Err(RunControlError::Stopping),
                RunState::Paused => return Ok(()),
                RunState::Running => inner.desired = RunState::Paused,
            }
        }
        self.kick_until(kick, timeout, "pause", |inner| {
            inner.parked + inner.exited == inner.vcpus
        })
    }

    pub fn resume(&self) -> Result<(), RunControlError> {
        let mut inner = self.lock();
        match inner.desired {
            RunState::Stopping => Err(RunControlError::Stopping),
            _ => {
                inner.desired = RunState::Running;
                self.changed.notify_all();
                Ok(())
            }
        }
    }

    /// Makes every vCPU leave its run loop and returns once all have.
    pub fn stop(&self, kick: impl Fn(), timeout: Duration) -> Result<(), RunControlError> {
        self.lock().desired = RunState::Stopping;
        self.changed.notify_all();
        self.kick_until(kick, timeout, "stop", |inner| inner.exited == inner.vcpus)
    }

    fn kick_until(
        &self,
        kick: impl Fn(),
        timeout: Duration,
        what: &'static str,
        done: impl Fn(&Inner) -> bool,
    ) -> Result<(), RunControlError> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        while !done(&inner) {
            let now = Instant::now();
            if now >= deadline {
                return Err(RunControlError::Timeout { what, timeout });
            }
            drop(inner);
            kick();
            inner = self.lock();
            let wait = KICK_INTERVAL.min(deadline - now);
            inner = self
                .changed
                .wait_timeout(inner, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A stand-in vCPU loop: "guest entries" are counted, and a kick is
    /// what would make KVM_RUN return.
    fn spawn_vcpu(
        control: &Arc<RunControl>,
        entries: &Arc<AtomicUsize>,
    ) -> std::thread::JoinHandle<()> {
        let control = Arc::clone(control);
        let entries = Arc::clone(entries);
        std::thread::spawn(move || {
            while control.before_entry() == Next::EnterGuest {
                entries.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
            control.exited();
        })
    }

    #[test]
    fn pause_parks_every_vcpu_and_resume_releases_them() {
        let control = Arc::new(RunControl::new(2));
        let entries = Arc::new(AtomicUsize::new(0));
        let threads = [
            spawn_vcpu(&control, &entries),
            spawn_vcpu(&control, &entries),
        ];
        control.pause(|| {}, Duration::from_secs(5)).expect("pause");
        assert_eq!(control.state(), RunState::Paused);
        let frozen = entries.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(entries.load(Ordering::SeqCst), frozen, "a paused vCPU ran");
        control.resume().expect("resume");
        let deadline = Instant::now() + Duration::from_secs(5);
        while entries.load(Ordering::SeqCst) == frozen {
            assert!(Instant::now() < deadline, "the vCPUs did not resume");
            std::thread::sleep(Duration::from_millis(1));
        }
        control.stop(|| {}, Duration::from_secs(5)).expect("stop");
        for thread in threads {
            thread.join().expect("vCPU thread");
        }
        assert!(matches!(control.resume(), Err(RunControlError::Stopping)));
        assert!(matches!(
            control.pause(|| {}, Duration::from_secs(1)),
            Err(RunControlError::Stopping)
        ));
    }

    #[test]
    fn stop_while_paused_ends_every_vcpu() {
        let control = Arc::new(RunControl::new(1));
        let entries = Arc::new(AtomicUsize::new(0));
        let thread = spawn_vcpu(&control, &entries);
        control.pause(|| {}, Duration::from_secs(5)).expect("pause");
        control.stop(|| {}, Duration::from_secs(5)).expect("stop");
        thread.join().expect("vCPU thread");
    }

    #[test]
    fn a_vcpu_that_never_acknowledges_times_out() {
        let control = RunControl::new(1);
        let kicks = AtomicUsize::new(0);
        let err = control
            .pause(
                || _ = kicks.fetch_add(1, Ordering::SeqCst),
                Duration::from_millis(50),
            )
            .expect_err("nobody parks");
        assert!(err.to_string().contains("did not pause"), "{err}");
        assert!(kicks.load(Ordering::SeqCst) > 1, "kicks are repeated");
    }
}
