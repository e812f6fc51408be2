//! The shim's explicit task state machine: containers (each with its init
//! process and exec'd processes) and the transitions the Task API may make.
//! The ttrpc service is a thin adapter over this.

mod container;
mod process;
pub mod seam;

pub use container::Container;
pub use process::{Exit, Process, ProcessId, StdioPaths};

use containerd_shim::protos::api::Status as ApiStatus;

use crate::error::{Result, ShimError};

/// CRI's annotation: the pod a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// A process's lifecycle: `Created` → `Running` ⇄ `Paused` → `Stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// What may happen to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Pause,
    Resume,
    Exit,
}

impl Status {
    /// The state after `event`, or why it cannot happen now.
    pub fn next(self, event: Event, what: &str) -> Result<Status> {
        use Event::*;
        use Status::*;
        match (self, event) {
            (Created, Start) => Ok(Running),
            (Running, Pause) => Ok(Paused),
            (Paused, Resume) => Ok(Running),
            // A process can exit from any state (a kill, the VM dying).
            (_, Exit) => Ok(Stopped),
            (state, event) => Err(ShimError::FailedPrecondition(format!(
                "{what} is {}: cannot {}",
                state.name(),
                event.name()
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        }
    }

    pub fn to_api(self) -> ApiStatus {
        match self {
            Self::Created => ApiStatus::CREATED,
            Self::Running => ApiStatus::RUNNING,
            Self::Paused => ApiStatus::PAUSED,
            Self::Stopped => ApiStatus::STOPPED,
        }
    }

    /// Deleting is for processes that never started or have ended.
    pub fn deletable(self) -> bool {
        matches!(self, Self::Created | Self::Stopped)
    }
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Exit => "exit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_lifecycle() {
        assert_eq!(
            Status::Created.next(Event::Start, "c").unwrap(),
            Status::Running
        );
        assert_eq!(
            Status::Running.next(Event::Pause, "c").unwrap(),
            Status::Paused
        );
        assert_eq!(
            Status::Paused.next(Event::Resume, "c").unwrap(),
            Status::Running
        );
        assert_eq!(
            Status::Paused.next(Event::Exit, "c").unwrap(),
            Status::Stopped
        );
        let err = Status::Stopped.next(Event::Start, "task c1").unwrap_err();
        assert_eq!(err.to_string(), "task c1 is stopped: cannot start");
        assert!(Status::Running.next(Event::Start, "c").is_err());
        assert!(Status::Created.next(Event::Pause, "c").is_err());
        assert!(Status::Created.deletable() && Status::Stopped.deletable());
        assert!(!Status::Running.deletable() && !Status::Paused.deletable());
    }
}
