//! What starting or running a VM can fail with. Boot failures carry the
//! guest's last console lines and the boot timeline, so they explain
//! themselves.

use crate::timeline::Timeline;

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
        "{name} (pid {pid}) {status} during boot; timeline: {timeline}; last console lines:\n{console}"
    )]
    HelperExited {
        name: &'static str,
        pid: u32,
        /// How it ended, as [`crate::process::describe_exit`] words it.
        status: String,
        timeline: Box<Timeline>,
        console: String,
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
