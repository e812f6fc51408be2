//! One process the agent started: its pid, stdio and exit.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::SystemTime;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::sync::{oneshot, watch};

use super::stdio::ProcessIo;
use crate::error::{AgentError, Result};
use crate::reaper::ExitStatus;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: i32,
    pub at: SystemTime,
}

/// What [`Process::wait`] reports: the exit, once all output is delivered.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub exit: Exit,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

#[derive(Debug)]
pub struct Process {
    /// "container/exec" (exec "init" for the init process), for messages.
    pub name: String,
    pub pid: i32,
    /// Signals go through a pidfd, so a recycled pid can never be hit.
    pidfd: Option<OwnedFd>,
    pub io: ProcessIo,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    /// Tracks a running process. `exit` comes from the reaper.
    pub fn new(
        name: String,
        pid: i32,
        io: ProcessIo,
        exit: oneshot::Receiver<ExitStatus>,
    ) -> Arc<Self> {
        // Opened before the exit can be reaped: if the process is already a
        // zombie the pidfd still refers to it, and signals to it are no-ops.
        let pidfd = Pid::from_raw(pid).and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok());
        let process = Arc::new(Self {
            name,
            pid,
            pidfd,
            io,
            exit: watch::Sender::new(None),
        });
        let watcher = Arc::clone(&process);
        tokio::spawn(async move {
            // A dropped sender means the agent is shutting down; report the
            // process as killed rather than leave waiters hanging.
            let status = exit.await.map(|s| s.0).unwrap_or(128 + libc::SIGKILL);
            watcher.exit.send_replace(Some(Exit {
                status,
                at: SystemTime::now(),
            }));
        });
        process
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits for the exit alone, not for output.
    pub async fn exit(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.unwrap_or_else(killed_now),
            Err(_) => killed_now(),
        }
    }

    /// Waits for the exit and for stdout and stderr to be read to their end.
    pub async fn wait(&self) -> Finished {
        let exit = self.exit().await;
        let (stdout_bytes, stderr_bytes) =
            tokio::join!(self.io.stdout.drained(), self.io.stderr.drained());
        Finished {
            exit,
            stdout_bytes,
            stderr_bytes,
        }
    }

    /// Sends `signal` to this process alone.
    pub fn signal(&self, signal: i32) -> Result<()> {
        if self.exited().is_some() {
            return Err(AgentError::Exited(self.name.clone()));
        }
        let pidfd = self.pidfd.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition(format!("process {} cannot be signalled", self.name))
        })?;
        let signal = Signal::from_named_raw(signal)
            .ok_or_else(|| AgentError::invalid("signal", format!("{signal} is not a signal")))?;
        pidfd_send_signal(pidfd.as_fd(), signal).map_err(|err| match err {
            rustix::io::Errno::SRCH => AgentError::Exited(self.name.clone()),
            err => AgentError::io(format!("signalling {}", self.name), err.into()),
        })
    }
}

fn killed_now() -> Exit {
    Exit {
        status: 128 + libc::SIGKILL,
        at: SystemTime::now(),
    }
}
