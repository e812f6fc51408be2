//! `hull-agent`: PID 1 of a Hull guest.
//!
//! It serves the `hull.agent.v1` API ([`hull_proto`]) over vsock and runs OCI
//! containers with youki's `libcontainer`. With `serve --listen unix:PATH` it
//! runs the same server on a host, which is how its tests drive it.

pub mod cgroup;
pub mod error;
pub mod guest;
pub mod ids;
pub mod init;
pub mod network;
pub mod policy;
pub mod propagation;
pub mod reaper;
pub mod rpc;
pub mod runtime;
pub mod server;
pub mod service;
pub mod signals;
pub mod spec;
pub mod state;
pub mod sysctl;
