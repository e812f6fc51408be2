//! The agent's error type, and its one mapping to gRPC status codes.

use tonic::{Code, Status};

/// Everything an agent request can fail with. Each variant's message names the
/// field, container or process it is about, so the host can show it as is.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request itself is malformed: the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    #[error("{what} not found")]
    NotFound { what: String },

    #[error("process {0} has already exited")]
    Exited(String),

    #[error("{what} already exists")]
    AlreadyExists { what: String },

    /// The request is well formed but the object is in the wrong state.
    #[error("{0}")]
    FailedPrecondition(String),

    /// The sandbox's policy forbids this RPC.
    #[error("{0} is denied by the sandbox's agent policy")]
    Denied(&'static str),

    /// The container runtime (libcontainer, through the runtime helper) refused.
    #[error("runtime: {0}")]
    Runtime(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } | Self::Exited(_) => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Denied(_) => Code::PermissionDenied,
            Self::Runtime(_) | Self::Io { .. } => Code::Internal,
        }
    }
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_and_names_the_field() {
        let status = Status::from(AgentError::invalid("rootfs", "must be absolute"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "rootfs: must be absolute");
        let status = Status::from(AgentError::not_found("container \"x\""));
        assert_eq!(status.code(), Code::NotFound);
    }
}
