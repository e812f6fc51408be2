//! The agent's behaviour, independent of gRPC: one method per RPC, split by
//! area (sandbox, containers, processes, io). `crate::rpc` adapts it to tonic.

mod containers;
mod io;
mod oom;
mod processes;
mod sandbox;

pub use containers::validate_create_container;
pub use io::OutputBytes;
pub use processes::validate_exec_process;
pub use sandbox::{SandboxPlan, plan_sandbox};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hull_proto::v1 as api;
use tokio::sync::{broadcast, watch};

use crate::error::{AgentError, Result};
use crate::ids;
use crate::reaper::Reaper;
use crate::runtime::{Operation, Runtime, StdioSetup};
use crate::state::stdio::{PendingStdio, ProcessIo, StdioRequest};
use crate::state::{Container, Containers, Process};

/// How long a new tty may take to reach the agent after its process exists.
const TTY_HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the agent keeps its files and finds cgroups.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub cgroup_root: PathBuf,
    /// The agent is the guest's init: set the hostname, power off at the end.
    pub pid1: bool,
}

#[derive(Debug)]
pub struct Agent {
    config: Config,
    runtime: Runtime,
    reaper: Arc<Reaper>,
    containers: Containers,
    sandbox: tokio::sync::Mutex<sandbox::SandboxState>,
    /// Set by CreateSandbox; nothing is denied before.
    policy: std::sync::RwLock<crate::policy::Policy>,
    oom_events: broadcast::Sender<api::OomEvent>,
    oom_watchers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    shutdown: watch::Sender<bool>,
    next_console: AtomicU64,
}

impl Agent {
    pub fn new(config: Config, reaper: Arc<Reaper>) -> Result<Arc<Self>> {
        for dir in [config.bundles_dir(), config.tty_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|err| AgentError::io(format!("creating {}", dir.display()), err))?;
        }
        let runtime = Runtime::new(config.state_dir.join("runtime"), Arc::clone(&reaper))?;
        Ok(Arc::new(Self {
            config,
            runtime,
            reaper,
            containers: Containers::default(),
            sandbox: tokio::sync::Mutex::default(),
            policy: std::sync::RwLock::default(),
            oom_events: broadcast::channel(64).0,
            oom_watchers: Mutex::default(),
            shutdown: watch::Sender::new(false),
            next_console: AtomicU64::new(0),
        }))
    }

    /// Becomes true once DestroySandbox has answered: the server then stops.
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks the server to stop, as DestroySandbox and SIGTERM do.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn health(&self) -> api::HealthResponse {
        api::HealthResponse {
            api_version: api::API_VERSION.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Refuses `rpc` if the sandbox's policy denies it.
    pub fn allow(&self, rpc: &'static str) -> Result<()> {
        self.policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(rpc)
    }

    /// Whether the sandbox's policy says never to answer `rpc` (an agent
    /// built for tests with `test-hang` only: see [`crate::policy`]).
    pub fn hangs(&self, rpc: &str) -> bool {
        self.policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .hangs(rpc)
    }

    pub fn guest_details(&self) -> api::GuestDetailsResponse {
        crate::guest::details(&self.config.cgroup_root, self.config.pid1)
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        ids::validate("container_id", id)?;
        self.containers.get(id)
    }

    /// The container and process a [`api::ProcessRef`] names.
    fn process(&self, process: Option<&api::ProcessRef>) -> Result<(Arc<Container>, Arc<Process>)> {
        let process = process.ok_or_else(|| AgentError::invalid("process", "is missing"))?;
        ids::validate_exec("process.exec_id", &process.exec_id)?;
        let container = self.container(&process.container_id)?;
        let found = container.process(&process.exec_id)?;
        Ok((container, found))
    }

    fn bundle_dir(&self, container_id: &str) -> PathBuf {
        self.config.bundles_dir().join(container_id)
    }

    /// Starts a process through the runtime with the stdio the client asked
    /// for, and returns its pid and the agent's ends of its stdio.
    async fn spawn_process(
        &self,
        container_id: &str,
        stdio: StdioRequest,
        operation: impl FnOnce(StdioSetup) -> Operation,
    ) -> Result<(i32, ProcessIo)> {
        let console = self.config.tty_dir().join(format!(
            "{}.sock",
            self.next_console.fetch_add(1, Ordering::Relaxed)
        ));
        match PendingStdio::new(stdio, console)? {
            PendingStdio::Pipes { child, io } => {
                let pid = self
                    .runtime
                    .run_for_pid(container_id, operation(StdioSetup::Fds), Some(child))
                    .await?;
                Ok((pid, io))
            }
            PendingStdio::Tty { socket } => {
                let path = socket.path().to_owned();
                let handover = tokio::spawn(socket.receive());
                let pid = match self
                    .runtime
                    .run_for_pid(
                        container_id,
                        operation(StdioSetup::ConsoleSocket(path)),
                        None,
                    )
                    .await
                {
                    Ok(pid) => pid,
                    Err(err) => {
                        handover.abort();
                        return Err(err);
                    }
                };
                let io = tokio::time::timeout(TTY_HANDOVER_TIMEOUT, handover)
                    .await
                    .map_err(|_| {
                        AgentError::Runtime(format!(
                            "the tty of {container_id} did not arrive in {TTY_HANDOVER_TIMEOUT:?}"
                        ))
                    })?
                    .map_err(|err| AgentError::Runtime(format!("tty handover: {err}")))??;
                Ok((pid, io))
            }
        }
    }
}

impl Config {
    fn bundles_dir(&self) -> PathBuf {
        self.state_dir.join("bundles")
    }

    /// Console sockets get short names here: a Unix socket path is limited to
    /// 108 bytes.
    fn tty_dir(&self) -> PathBuf {
        self.state_dir.join("tty")
    }

    fn sandbox_dir(&self) -> PathBuf {
        self.state_dir.join("sandbox")
    }
}

fn stdio_request(stdio: Option<&api::Stdio>) -> StdioRequest {
    stdio.map_or_else(StdioRequest::default, |s| StdioRequest {
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        terminal: s.terminal,
    })
}

fn remove_dir(dir: &Path) {
    if let Err(err) = std::fs::remove_dir_all(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), %err, "could not remove");
    }
}
