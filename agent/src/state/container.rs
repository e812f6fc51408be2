//! One container: its init process, its exec'd processes and its status.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use super::process::Process;
use crate::error::{AgentError, Result};

/// The lifecycle of a container as the agent reports it. `Stopped` is derived
/// from the init process having exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// The OCI bundle the agent wrote: config.json and exec process files.
    pub bundle: PathBuf,
    /// The container's cgroup directory.
    pub cgroup: PathBuf,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    status: Mutex<Status>,
    /// Serializes runtime operations on this container: libcontainer keeps its
    /// state in one file per container.
    pub operations: tokio::sync::Mutex<()>,
}

impl Container {
    pub fn new(id: String, bundle: PathBuf, cgroup: PathBuf, init: Arc<Process>) -> Self {
        Self {
            id,
            bundle,
            cgroup,
            init,
            execs: Mutex::default(),
            status: Mutex::new(Status::Created),
            operations: tokio::sync::Mutex::new(()),
        }
    }

    pub fn status(&self) -> Status {
        if self.init.exited().is_some() {
            Status::Stopped
        } else {
            *self.status.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    pub fn set_status(&self, status: Status) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// Fails unless the container is in one of `allowed`.
    pub fn require(&self, action: &str, allowed: &[Status]) -> Result<Status> {
        let status = self.status();
        if allowed.contains(&status) {
            Ok(status)
        } else {
            Err(AgentError::FailedPrecondition(format!(
                "cannot {action} container {:?}: it is {status}",
                self.id
            )))
        }
    }

    /// The init process for an empty exec id, else the exec'd process.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        self.execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                AgentError::not_found(format!("exec {exec_id:?} in container {:?}", self.id))
            })
    }

    pub fn has_exec(&self, exec_id: &str) -> bool {
        self.execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(exec_id)
    }

    pub fn add_exec(&self, exec_id: String, process: Arc<Process>) {
        self.execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(exec_id, process);
    }

    /// Every process the agent started in this container, init first.
    pub fn processes(&self) -> Vec<Arc<Process>> {
        let execs = self.execs.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::once(Arc::clone(&self.init))
            .chain(execs.values().cloned())
            .collect()
    }
}
