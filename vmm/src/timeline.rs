//! When the milestones of a boot happened, on the host's monotonic clock.
//!
//! `CLOCK_MONOTONIC` is the same clock in every process of the host, so the
//! process that started the VMM can line these up with its own milestones
//! (such as the agent answering).

use std::sync::{Mutex, PoisonError};

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64,
        // Linux always has a monotonic clock; zero reads as "unknown".
        Err(_) => 0,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootTimeline {
    /// The VMM began building the VM.
    pub vmm_start_ns: u64,
    /// Memory, devices and the guest image are in place.
    pub vm_built_ns: Option<u64>,
    /// The boot vCPU first entered the guest, at the kernel's entry point.
    pub kernel_entry_ns: Option<u64>,
}

/// The timeline as the VMM fills it in, shared with the control channel.
#[derive(Debug)]
pub struct TimelineRecorder(Mutex<BootTimeline>);

impl TimelineRecorder {
    pub fn start() -> Self {
        Self(Mutex::new(BootTimeline {
            vmm_start_ns: monotonic_ns(),
            ..BootTimeline::default()
        }))
    }

    pub fn snapshot(&self) -> BootTimeline {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn vm_built(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .vm_built_ns = Some(monotonic_ns());
    }

    pub fn kernel_entry(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kernel_entry_ns = Some(monotonic_ns());
    }
}
