//! The seam between the task state machine ([`crate::tasks`]) and what it
//! drives: the guest agent and the pod's VM. The real implementations talk
//! to a VM over vsock ([`crate::agent`], [`crate::sandbox`]); the unit tests
//! put stubs here that can hang or fail any call, so that the state machine
//! is tested without root, containerd or a kernel (as runwasi's shim does).
//!
//! Nothing here has a deadline: the state machine puts one on every call
//! (see [`crate::tasks::Deadlines`]), because it alone knows what to do
//! when the guest does not answer.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::protos::api;
use futures::stream::BoxStream;
use hull_proto::v1 as agent_api;
use tokio::sync::watch;

use super::{Exit, ProcessId, StdioPaths};
use crate::error::Result;
use crate::stdio::Copiers;

/// The agent calls the task state machine makes. Unary calls answer once;
/// `wait_process` and `oom_events` are long-lived (they answer when a
/// process exits, or stream for the VM's life).
#[async_trait]
pub trait GuestAgent: Send + Sync + 'static {
    /// Creates the container; answers its init's guest pid.
    async fn create_container(&self, request: agent_api::CreateContainerRequest) -> Result<u32>;
    async fn start_container(&self, container: &str) -> Result<()>;
    /// Starts an exec'd process; answers its guest pid.
    async fn exec_process(&self, request: agent_api::ExecProcessRequest) -> Result<u32>;
    async fn signal_process(&self, process: &ProcessId, signal: u32, all: bool) -> Result<()>;
    async fn remove_container(&self, container: &str) -> Result<()>;
    async fn set_paused(&self, container: &str, paused: bool) -> Result<()>;
    async fn list_processes(&self, container: &str) -> Result<Vec<u32>>;
    async fn close_stdin(&self, process: &ProcessId) -> Result<()>;
    async fn resize_tty(&self, process: &ProcessId, rows: u32, cols: u32) -> Result<()>;
    async fn update_container(&self, container: &str, resources_json: Vec<u8>) -> Result<()>;
    async fn stats_container(&self, container: &str) -> Result<agent_api::StatsContainerResponse>;
    /// Attaches the process's stdio to containerd's FIFOs (opening the
    /// output streams is a call; the copying goes on in the background).
    async fn attach_stdio(&self, process: &ProcessId, paths: &StdioPaths) -> Result<Copiers>;
    /// Asks the guest to tear the sandbox down and power off.
    async fn destroy_sandbox(&self) -> Result<()>;
    /// Long-lived: answers when the process exits.
    async fn wait_process(&self, process: &ProcessId) -> Result<Exit>;
    /// Long-lived: the ids the guest names in its OOM kills. Nothing about
    /// them is trusted (see `Tasks::watch_oom`).
    async fn oom_events(&self) -> Result<BoxStream<'static, String>>;
}

/// What Create needs of the host to hand a container to the guest: its
/// spec and rootfs path as the guest sees them, and the host mounts behind
/// them, undone at Delete.
#[derive(Debug)]
pub struct Prepared {
    pub oci_spec_json: Vec<u8>,
    pub guest_rootfs: String,
    /// Pod-wide file systems the spec binds, for the agent to mount once.
    pub pod_mounts: Vec<agent_api::SharedMount>,
    pub host: Box<dyn HostResources>,
}

/// A container's host side (its rootfs and volume mounts).
pub trait HostResources: Send + Sync + std::fmt::Debug {
    /// Undoes it; called once, at Delete.
    fn release(&mut self);
}

/// The pod's VM, once booted.
#[async_trait]
pub trait PodVm: Send + Sync + 'static {
    fn agent(&self) -> Arc<dyn GuestAgent>;
    /// Resolves with the reason once the VM is gone.
    fn gone(&self) -> watch::Receiver<Option<String>>;
    /// Sets up the container's host side; the spec is the bundle's.
    fn prepare(
        &self,
        container: &str,
        bundle: &Path,
        spec: serde_json::Value,
        rootfs: &[api::Mount],
    ) -> Result<Prepared>;
    /// Kills the VM now, without asking the guest: every process of the
    /// pod is lost, and `gone` resolves with `reason`. Returns at once.
    fn kill(&self, reason: String);
    /// Stops the VM (after DestroySandbox, the guest gets a bounded time
    /// to power off) and removes what the pod had on the host. Always
    /// ends; idempotent.
    async fn stop(&self);
}

/// Boots the pod's VM for the first container of the pod.
#[async_trait]
pub trait PodBooter: Send + Sync + 'static {
    async fn boot(
        &self,
        request: &api::CreateTaskRequest,
        spec: &serde_json::Value,
    ) -> Result<Arc<dyn PodVm>>;
}
