//! When the milestones of a boot happened, counted from the VM process start.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub started: Instant,
    /// `started` on `CLOCK_MONOTONIC`, the clock hull-vmm reports in.
    pub started_monotonic_ns: u64,
    /// The boot vCPU entered the kernel (known for hull-vmm only).
    pub kernel_entry: Option<Duration>,
    pub first_console_line: Option<Duration>,
    pub agent_ready: Option<Duration>,
}

impl Timeline {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            started_monotonic_ns: hull_vmm::timeline::monotonic_ns(),
            kernel_entry: None,
            first_console_line: None,
            agent_ready: None,
        }
    }
}

fn millis(milestone: Option<Duration>) -> String {
    milestone.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()))
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VMM started 0 ms, kernel entry {}, first console line {}, agent ready {}",
            millis(self.kernel_entry),
            millis(self.first_console_line),
            millis(self.agent_ready)
        )
    }
}
