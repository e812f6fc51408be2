//! One process of a container: the init process or an exec'd one.

use std::time::SystemTime;

use hull_proto::v1 as api;
use tokio::sync::watch;

use super::{Event, Status};
use crate::error::Result;

/// The container and, for an exec'd process, its exec id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub container: String,
    pub exec: Option<String>,
}

impl ProcessId {
    pub fn to_agent(&self) -> api::ProcessRef {
        api::ProcessRef {
            container_id: self.container.clone(),
            exec_id: self.exec.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.exec {
            Some(exec) => write!(f, "exec {exec} of task {}", self.container),
            None => write!(f, "task {}", self.container),
        }
    }
}

/// containerd's FIFOs for the process; empty when not wanted.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    pub fn to_agent(&self) -> api::Stdio {
        api::Stdio {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
            terminal: self.terminal,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug)]
pub struct Process {
    pub id: ProcessId,
    /// The guest pid (what containerd shows; meaningful inside the VM).
    pub pid: u32,
    pub stdio: StdioPaths,
    status: Status,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(id: ProcessId, pid: u32, stdio: StdioPaths) -> Self {
        Self {
            id,
            pid,
            stdio,
            status: Status::Created,
            exit: watch::channel(None).0,
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn apply(&mut self, event: Event) -> Result<()> {
        self.status = self.status.next(event, &self.id.to_string())?;
        Ok(())
    }

    /// Records the exit, once; returns whether this call recorded it.
    pub fn exited(&mut self, exit: Exit) -> bool {
        if self.exit.borrow().is_some() {
            return false;
        }
        self.status = Status::Stopped;
        self.exit.send_replace(Some(exit));
        true
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Resolves when the process has exited.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }
}
