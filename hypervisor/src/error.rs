//! What starting or running a VM can fail with. Boot failures carry the
//! guest's last console lines and the boot timeline, so they explain
//! themselves.

use crate::timeline::Timeline;

/// The most bytes of a helper's own log an error carries.
pub const HELPER_LOG_TAIL: usize = 1024;

/// The helper's log after the console in an error's text, if it has one.
fn log_section(name: &str, log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("\n[{name} log]\n{log}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{field}: {reason}")]
    Config { field: &'static str, reason: String },

    #[error("{program} not found: {reason}")]
    MissingProgram { program: String, reason: String },

    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{name} (pid {pid}) {status} during boot; timeline: {timeline}; last console lines:\n{console}{}",
        log_section(.name, .helper_log)
    )]
    HelperExited {
        name: &'static str,
        pid: u32,
        /// How it ended, as [`crate::process::describe_exit`] words it.
        status: String,
        timeline: Box<Timeline>,
        /// The guest's last console lines, bounded (see
        /// [`crate::console::Limits`]).
        console: String,
        /// The end of the exited process's own log (its stderr), bounded
        /// to [`HELPER_LOG_TAIL`] bytes; empty if it logged nothing.
        helper_log: String,
    },

    #[error(
        "the agent did not answer on vsock port {port} within {seconds} s ({waited_for}); timeline: {timeline}; last console lines:\n{console}"
    )]
    BootTimeout {
        port: u32,
        /// What was still missing: the guest's call or the agent's answer.
        waited_for: String,
        seconds: u64,
        timeline: Box<Timeline>,
        console: String,
    },

    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        operation: &'static str,
        backend: &'static str,
    },

    #[error("the VMM's control channel: {0}")]
    Control(String),

    #[error("vsock port {port}: {reason}")]
    Vsock { port: u32, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl VmError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
