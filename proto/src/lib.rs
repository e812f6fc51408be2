//! The Hull guest agent API, package `hull.agent.v1`.
//!
//! The `.proto` file beside this crate is the source of truth; this crate only
//! exposes what `tonic` generates from it.

/// Version 1 of the agent API.
pub mod v1 {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("hull.agent.v1");

    /// The value [`HealthResponse::api_version`] carries for this API.
    pub const API_VERSION: &str = "hull.agent.v1";

    /// The vsock port the agent listens on inside the guest.
    pub const AGENT_VSOCK_PORT: u32 = 1024;

    /// The host vsock port the agent dials once it listens, to say the
    /// guest is up: the host connects only after that call, when the
    /// guest's vsock device surely runs. The call carries nothing.
    pub const AGENT_READY_VSOCK_PORT: u32 = 1025;
}
