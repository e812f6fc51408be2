//! The control channel: how the process that started `hull-vmm` (the shim)
//! asks for its state and boot timeline, pauses, resumes and stops it.
//!
//! A Unix stream socket carrying one JSON object per line each way: a
//! [`Request`] from the client, a [`Response`] from the VMM. [`request`] is
//! the client side.

mod protocol;
mod server;

pub use protocol::{ControlError, Request, Response, request};
pub use server::{BoundControl, ControlServer, VcpuKicker};
