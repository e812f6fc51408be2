//! The agent's side: runs one operation in a fresh `runtime-helper` process.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::io::AsyncBufReadExt;

use super::{Operation, Request, Response, STDIO_FDS};
use crate::error::{AgentError, Result};
use crate::reaper::Reaper;

/// libcontainer operations end in well under a second; this only bounds a
/// helper that hangs, so the RPC fails instead of hanging with it.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs libcontainer operations for the agent, one helper process each.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    executable: PathBuf,
    reaper: Arc<Reaper>,
}

impl Runtime {
    /// `root` is libcontainer's state directory.
    pub fn new(root: PathBuf, reaper: Arc<Reaper>) -> Result<Self> {
        std::fs::create_dir_all(&root)
            .map_err(|err| AgentError::io(format!("creating {}", root.display()), err))?;
        let executable = std::env::current_exe()
            .map_err(|err| AgentError::io("finding the agent's own executable", err))?;
        Ok(Self {
            root,
            executable,
            reaper,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `operation` on `container_id`. `stdio` are the container's stdin,
    /// stdout and stderr, for the operations that start a process.
    pub async fn run(
        &self,
        container_id: &str,
        operation: Operation,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<Response> {
        let label = operation_name(&operation);
        let request = Request {
            root: self.root.clone(),
            container_id: container_id.to_owned(),
            operation,
        };
        let request = serde_json::to_vec(&request)
            .map_err(|err| AgentError::Runtime(format!("encoding the {label} request: {err}")))?;

        let mut command = Command::new(&self.executable);
        command
            .arg("runtime-helper")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(fds) = stdio {
            let mappings = fds
                .into_iter()
                .zip(STDIO_FDS)
                .map(|(parent_fd, child_fd)| FdMapping {
                    parent_fd,
                    child_fd,
                })
                .collect();
            command
                .fd_mappings(mappings)
                .map_err(|_| AgentError::Runtime("stdio descriptors collide".into()))?;
        }
        let (mut child, exit) = self
            .reaper
            .spawn(&mut command)
            .map_err(|err| AgentError::io("starting the runtime helper", err))?;
        // The command holds the parent's copies of the container's stdio;
        // dropping it closes them, so EOF reaches readers once the container
        // closes its own.
        drop(command);

        let mut stdin = child.stdin.take().ok_or_else(|| helper_broken(label))?;
        let stdout = child.stdout.take().ok_or_else(|| helper_broken(label))?;
        tokio::task::spawn_blocking(move || stdin.write_all(&request))
            .await
            .map_err(|err| AgentError::Runtime(format!("{label}: {err}")))?
            .map_err(|err| AgentError::io(format!("sending the {label} request"), err))?;

        // Read one line, not to EOF: the container's processes may keep a
        // copy of the pipe open while they wait to be started.
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))
            .map_err(|err| AgentError::io("reading the runtime helper", err))?;
        let mut line = String::new();
        let read = tokio::time::timeout(
            HELPER_TIMEOUT,
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        let response = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str::<Response>(&line).map_err(|err| {
                AgentError::Runtime(format!("{label}: unreadable helper answer {line:?}: {err}"))
            })?,
            Ok(Ok(_)) => {
                let status = exit.await.map(|s| s.0).unwrap_or(-1);
                return Err(AgentError::Runtime(format!(
                    "{label}: the runtime helper exited with status {status} without answering"
                )));
            }
            Ok(Err(err)) => {
                return Err(AgentError::io(format!("{label}: reading the helper"), err));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = exit.await;
                return Err(AgentError::Runtime(format!(
                    "{label}: the runtime helper gave no answer in {HELPER_TIMEOUT:?}"
                )));
            }
        };
        // The helper exits right after answering; waiting keeps it from
        // outliving the request.
        let _ = exit.await;
        match response {
            Response::Failed(message) => Err(AgentError::Runtime(format!("{label}: {message}"))),
            ok => Ok(ok),
        }
    }

    /// Runs an operation that returns a pid.
    pub async fn run_for_pid(
        &self,
        container_id: &str,
        operation: Operation,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<i32> {
        let label = operation_name(&operation);
        match self.run(container_id, operation, stdio).await? {
            Response::Pid(pid) => Ok(pid),
            other => Err(AgentError::Runtime(format!(
                "{label}: expected a pid from the helper, got {other:?}"
            ))),
        }
    }
}

fn operation_name(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create { .. } => "create",
        Operation::Start => "start",
        Operation::Exec { .. } => "exec",
        Operation::Kill { .. } => "kill",
        Operation::Pause => "pause",
        Operation::Resume => "resume",
        Operation::Update { .. } => "update",
        Operation::Delete { .. } => "delete",
    }
}

fn helper_broken(label: &str) -> AgentError {
    AgentError::Runtime(format!("{label}: the runtime helper's pipes are missing"))
}
