//! Reaps every child of the agent and hands exit statuses to whoever waits.
//!
//! The agent is PID 1 in the guest (or a child subreaper on a host), so it
//! inherits container processes whose creator, the runtime helper, has
//! exited. Only this module calls `waitpid`: anything else that waited would
//! steal statuses from it. Processes are spawned under [`Reaper::spawn`], which
//! holds off reaping for the length of `Command::spawn`, because the standard
//! library waits for a child itself when its `exec` fails.

use std::collections::{HashMap, VecDeque};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How many exits of processes nobody has asked about yet are kept. Orphans
/// of daemonizing container processes land here; the bound keeps a guest from
/// growing the agent's memory with them.
const MAX_UNCLAIMED: usize = 4096;

/// How a process ended, in the form shells and containerd report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(pub i32);

impl ExitStatus {
    fn from_wait(status: WaitStatus) -> Option<(i32, Self)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw(), Self(code))),
            WaitStatus::Signaled(pid, signal, _) => Some((pid.as_raw(), Self(128 + signal as i32))),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    unclaimed: VecDeque<(i32, ExitStatus)>,
}

/// The agent's single owner of `waitpid`.
pub struct Reaper {
    table: Mutex<Table>,
    spawn_guard: RwLock<()>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

impl Reaper {
    /// Starts reaping on the current tokio runtime.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let reaper = Arc::new(Self {
            table: Mutex::default(),
            spawn_guard: RwLock::new(()),
        });
        let mut sigchld = signal(SignalKind::child())?;
        let task_reaper = Arc::clone(&reaper);
        tokio::spawn(async move {
            loop {
                task_reaper.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `command` and returns the child together with its exit status.
    /// Never call `wait` on the returned `Child`.
    pub fn spawn(
        &self,
        command: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let child = {
            let _no_reaping = self
                .spawn_guard
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            command.spawn()?
        };
        let exit = self.watch(child.id() as i32);
        Ok((child, exit))
    }

    /// The exit status of `pid`, a child (or adopted orphan) of the agent.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = table.unclaimed.iter().position(|(p, _)| *p == pid) {
            if let Some((_, status)) = table.unclaimed.remove(index) {
                let _ = tx.send(status);
            }
        } else {
            table.waiters.insert(pid, tx);
        }
        rx
    }

    fn reap_all(&self) {
        let _reaping = self
            .spawn_guard
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some((pid, exit)) = ExitStatus::from_wait(status) {
                        self.deliver(pid, exit);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::error!(%err, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn deliver(&self, pid: i32, exit: ExitStatus) {
        tracing::debug!(pid, status = exit.0, "reaped");
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        match table.waiters.remove(&pid) {
            Some(waiter) => {
                let _ = waiter.send(exit);
            }
            None => {
                if table.unclaimed.len() == MAX_UNCLAIMED {
                    table.unclaimed.pop_front();
                }
                table.unclaimed.push_back((pid, exit));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test function: two reapers in one process would steal each other's
    // children, exactly what the agent avoids by having one.
    #[tokio::test]
    async fn reports_statuses_including_exits_nobody_asked_about_yet() {
        let reaper = Reaper::start().expect("reaper");
        let (_child, exit) = reaper
            .spawn(Command::new("sh").args(["-c", "exit 7"]))
            .expect("spawn");
        assert_eq!(exit.await.expect("status"), ExitStatus(7));
        let (_child, exit) = reaper
            .spawn(Command::new("sh").args(["-c", "kill -TERM $$"]))
            .expect("spawn");
        assert_eq!(exit.await.expect("status"), ExitStatus(143));

        // The reaper is what waits for it; that is the point of the test.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("true").spawn().expect("spawn");
        let pid = child.id() as i32;
        let mut reaped_early = false;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let table = reaper.table.lock().expect("lock");
            if table.unclaimed.iter().any(|(p, _)| *p == pid) {
                reaped_early = true;
                break;
            }
        }
        assert!(reaped_early, "the exit of {pid} was never reaped");
        assert_eq!(reaper.watch(pid).await.expect("status"), ExitStatus(0));
    }
}
