//! The vCPU threads, and the signal that kicks them out of KVM_RUN.

use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use super::vcpu::{VcpuError, VcpuExitReason};
use crate::control::VcpuKicker;

pub type VcpuResult = Result<VcpuExitReason, VcpuError>;

/// The signal's only job is to interrupt KVM_RUN (installed without
/// SA_RESTART, so the ioctl returns EINTR); the run loop does the rest.
extern "C" fn on_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {}

fn kick_signal() -> c_int {
    SIGRTMIN()
}

/// Installs the kick handler. Idempotent.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), on_kick).map_err(std::io::Error::from)
}

#[derive(Debug, Default)]
pub struct VcpuThreads {
    // Unjoined handles keep their pthread ids valid, which is what makes
    // signalling them sound even after a thread has returned.
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl VcpuThreads {
    pub fn push(&self, handle: JoinHandle<()>) {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
    }

    /// Waits for every vCPU thread to end.
    pub fn join_all(&self) {
        let handles =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(PoisonError::into_inner));
        for handle in handles {
            if handle.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
    }
}

impl VcpuKicker for VcpuThreads {
    fn kick(&self) {
        for handle in self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            if let Err(err) = handle.kill(kick_signal()) {
                tracing::debug!(%err, "kicking a vCPU thread");
            }
        }
    }
}
