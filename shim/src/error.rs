//! What the shim's operations fail with, and the one place where that turns
//! into a ttrpc status for containerd.

use containerd_shim::protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A request or configuration value is wrong; the message names it.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    #[error("{0} not found")]
    NotFound(String),

    #[error("{0} already exists")]
    AlreadyExists(String),

    /// The task is in a state where the request makes no sense.
    #[error("{0}")]
    FailedPrecondition(String),

    #[error("{0} is not supported by the hull runtime")]
    Unimplemented(&'static str),

    #[error(transparent)]
    Vm(#[from] hull_hypervisor::VmError),

    /// Mirroring the pod's CNI interfaces into the VM failed.
    #[error("pod network: {0}")]
    Network(#[from] crate::network::NetworkError),

    /// The sandbox's cgroup on the host (see [`crate::cgroup`]).
    #[error(transparent)]
    Cgroup(#[from] hull_hypervisor::cgroup::CgroupError),

    /// The agent in the guest answered with an error.
    #[error("agent: {0}")]
    Agent(#[from] tonic::Status),

    /// The agent did not answer in time.
    #[error("the agent did not answer {rpc} within {after:?}")]
    AgentTimeout {
        rpc: &'static str,
        after: std::time::Duration,
    },

    /// The pod's VM is gone (its VMM or a helper died); the message says which.
    #[error("the pod's VM is gone: {0}")]
    VmGone(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, ShimError>;

impl ShimError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            Self::NotFound(_) => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Unimplemented(_) => Code::UNIMPLEMENTED,
            Self::Agent(status) => match status.code() {
                tonic::Code::InvalidArgument => Code::INVALID_ARGUMENT,
                tonic::Code::NotFound => Code::NOT_FOUND,
                tonic::Code::AlreadyExists => Code::ALREADY_EXISTS,
                tonic::Code::FailedPrecondition => Code::FAILED_PRECONDITION,
                tonic::Code::Unavailable => Code::UNAVAILABLE,
                _ => Code::INTERNAL,
            },
            Self::VmGone(_) => Code::UNAVAILABLE,
            Self::AgentTimeout { .. } => Code::DEADLINE_EXCEEDED,
            Self::Cgroup(hull_hypervisor::cgroup::CgroupError::BadPath { .. }) => {
                Code::INVALID_ARGUMENT
            }
            Self::Cgroup(_) => Code::INTERNAL,
            Self::Vm(hull_hypervisor::VmError::Config { .. }) => Code::INVALID_ARGUMENT,
            Self::Vm(_) | Self::Network(_) | Self::Io { .. } => Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(err: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_status_codes_once() {
        let status = |err: ShimError| match ttrpc::Error::from(err) {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_owned()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(ShimError::invalid("io.hull.vcpus", "\"x\" is not a number")),
            (
                Code::INVALID_ARGUMENT,
                "io.hull.vcpus: \"x\" is not a number".into()
            )
        );
        assert_eq!(
            status(ShimError::NotFound("task c1".into())).0,
            Code::NOT_FOUND
        );
        assert_eq!(
            status(ShimError::Agent(tonic::Status::not_found(
                "no such process"
            )))
            .0,
            Code::NOT_FOUND
        );
        assert_eq!(
            status(ShimError::VmGone("hull-vmm was killed".into())).0,
            Code::UNAVAILABLE
        );
    }
}
