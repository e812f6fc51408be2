//! When the milestones of a boot happened, counted from the VM process start.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub started: Instant,
    pub first_console_line: Option<Duration>,
    pub agent_ready: Option<Duration>,
}

impl Timeline {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
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
            "VM process started 0 ms, first console line {}, agent ready {}",
            millis(self.first_console_line),
            millis(self.agent_ready)
        )
    }
}
