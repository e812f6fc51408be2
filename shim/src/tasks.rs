//! The pod's tasks: what each Task API call does, over the state machine in
//! [`crate::task`], behind the seam of [`crate::task::seam`] (the guest
//! agent and the pod's VM). One verb per file.
//!
//! The guest may lie or stall, so:
//! - the state is kept under a plain mutex that is never held across an
//!   await: every verb takes what it needs, releases it, calls the agent,
//!   then re-locks and re-checks. State and Kill of one container never
//!   wait on a call for another;
//! - the pod boots once ([`tokio::sync::OnceCell`]): only Creates wait for
//!   the boot;
//! - every agent call has a deadline ([`Deadlines`]). When Kill, Delete or
//!   Shutdown miss theirs, the VM is killed: every process of the pod then
//!   exits with [`VM_GONE_EXIT_STATUS`], and the log says why.

mod create;
mod delete;
mod kill;
mod query;
mod start;
mod watch;

#[cfg(test)]
mod stub;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::OnceCell;

use crate::error::{Result, ShimError};
use crate::events::{Events, Throttle};
use crate::stdio::Copiers;
use crate::task::seam::{PodBooter, PodVm};
use crate::task::{Container, Exit, ProcessId};

pub use crate::task::SANDBOX_ID_ANNOTATION;
/// The exit status of a process whose VM died under it (containerd shows
/// it as an error exit, like runc's 255 for a lost process).
pub const VM_GONE_EXIT_STATUS: u32 = 255;

/// How long each agent call may take. A guest that misses a deadline is
/// not waited for again: for Kill, Delete and Shutdown the VM is killed.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// CreateContainer: the guest sets up the rootfs and runs the OCI
    /// runtime's create (slow under emulation).
    pub create: Duration,
    /// StartContainer and ExecProcess (with the attach of its stdio).
    pub start: Duration,
    /// Every other unary call: SignalProcess, RemoveContainer, Pause, ...
    pub call: Duration,
    /// DestroySandbox, before the VM's stop.
    pub destroy: Duration,
    /// How long output copiers may take once a process exited.
    pub drain: Duration,
    /// How long a shim left without a task waits for containerd's Shutdown
    /// before it exits on its own: `Tasks::exit_if_abandoned`.
    pub abandoned: Duration,
    /// The same after the first Create (which may boot for a long time).
    pub abandoned_after_boot: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            create: Duration::from_secs(60),
            start: Duration::from_secs(30),
            // Under containerd's 10 s for CRI's handling of an exit (whose
            // Delete makes this call): a Delete whose RemoveContainer hangs
            // still ends in time, the VM killed.
            call: Duration::from_secs(8),
            destroy: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            abandoned: Duration::from_secs(30),
            abandoned_after_boot: Duration::from_secs(30),
        }
    }
}

/// OOM events a guest may have republished: a burst, then a few a second.
const OOM_BURST: u32 = 20;
const OOM_PERIOD: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// The booted pod, until it is stopped.
    pod: Option<Arc<dyn PodVm>>,
    /// Set when the pod was stopped: it does not boot again.
    pod_stopped: bool,
    containers: HashMap<String, Container>,
    /// Ids whose Create is in progress (reserved against a second Create).
    creating: HashSet<String>,
    /// Processes whose Start is in progress.
    starting: HashSet<ProcessId>,
    /// Exec specs kept from Exec until Start runs them.
    pending_execs: HashMap<ProcessId, Vec<u8>>,
    copiers: HashMap<ProcessId, Copiers>,
}

struct Inner {
    state: Mutex<State>,
    booted: OnceCell<Arc<dyn PodVm>>,
    booter: Arc<dyn PodBooter>,
    events: Events,
    deadlines: Deadlines,
    oom: Throttle,
    exit: Arc<containerd_shim::ExitSignal>,
}

#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").finish_non_exhaustive()
    }
}

/// What a call's deadline ended in.
enum Answer<T> {
    Answered(Result<T>),
    /// The agent did not answer in time; the error says which call.
    TimedOut(ShimError),
}

impl Tasks {
    pub fn new(
        booter: Arc<dyn PodBooter>,
        events: Events,
        deadlines: Deadlines,
        exit: Arc<containerd_shim::ExitSignal>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                booted: OnceCell::new(),
                booter,
                events,
                deadlines,
                oom: Throttle::new(OOM_PERIOD, OOM_BURST),
                exit,
            }),
        }
    }

    /// The state, for a short critical section: never held across an await
    /// (the guard is not `Send`, so a spawned task cannot even try).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn events(&self) -> &Events {
        &self.inner.events
    }

    fn deadlines(&self) -> &Deadlines {
        &self.inner.deadlines
    }

    /// The live pod, or why there is none.
    fn pod(&self) -> Result<Arc<dyn PodVm>> {
        let pod = self
            .lock()
            .pod
            .clone()
            .ok_or_else(|| ShimError::VmGone("the pod has no VM".into()))?;
        if let Some(reason) = pod.gone().borrow().clone() {
            return Err(ShimError::VmGone(reason));
        }
        Ok(pod)
    }

    /// Runs one agent call on `pod` under its deadline. It also ends as
    /// soon as the VM is gone (killed for another call that went
    /// unanswered, or dead): a call on a dead VM's transport can take until
    /// the VMM's exit to fail, and the exits of the pod's processes wait
    /// behind a Kill that waits on it.
    async fn call<T>(
        pod: &dyn PodVm,
        rpc: &'static str,
        after: Duration,
        call: impl Future<Output = Result<T>>,
    ) -> Answer<T> {
        let mut gone = pod.gone();
        let vm_gone = async move {
            let reason = gone
                .wait_for(Option::is_some)
                .await
                .map(|reason| reason.clone().unwrap_or_default());
            match reason {
                Ok(reason) => reason,
                // The pod went without a reason: only the deadline ends
                // the call.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            answer = tokio::time::timeout(after, call) => match answer {
                Ok(answer) => Answer::Answered(answer),
                Err(_) => Answer::TimedOut(ShimError::AgentTimeout { rpc, after }),
            },
            reason = vm_gone => Answer::Answered(Err(ShimError::VmGone(reason))),
        }
    }

    /// Runs one agent call under its deadline; a miss is an error.
    async fn bounded<T>(
        pod: &dyn PodVm,
        rpc: &'static str,
        after: Duration,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match Self::call(pod, rpc, after, call).await {
            Answer::Answered(answer) => answer,
            Answer::TimedOut(err) => {
                tracing::warn!(%err, "an agent call timed out");
                Err(err)
            }
        }
    }

    /// The guest did not answer a call that must end (Kill, Delete,
    /// Shutdown): its VM is killed, so that every process of the pod is
    /// lost (and reported so) rather than waited for forever.
    fn kill_vm(pod: &dyn PodVm, err: &ShimError) {
        let reason = format!("{err}: the shim killed the VM");
        tracing::error!(%reason, "the guest does not answer: killing the pod's VM");
        pod.kill(reason);
    }

    /// After the first Create, and after the Delete of the last task:
    /// containerd normally sends Shutdown next and the shim goes. But when
    /// the caller gave up first, nothing would ever stop the shim:
    /// - a kubelet's RunPodSandbox deadline while the VM was still booting:
    ///   containerd cleans up, disconnects and drops the request (the soak
    ///   found such shims left running);
    /// - CRI's handling of an exit that ran out of time while the shim was
    ///   deleting the task: containerd's retry finds the task gone and does
    ///   not delete it again, so no Shutdown follows (the fault tests found
    ///   that one).
    ///
    /// So `after` that (and once no Create is in progress), a shim with
    /// neither a pod nor a task exits by itself.
    fn exit_if_abandoned(&self, after: Duration) {
        let tasks = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            loop {
                let abandoned = {
                    let state = tasks.lock();
                    if !state.creating.is_empty() {
                        None
                    } else {
                        Some(state.pod.is_none() && state.containers.is_empty())
                    }
                };
                match abandoned {
                    Some(true) => {
                        tracing::warn!("no pod and no task, and no Shutdown came: exiting");
                        tasks.inner.exit.signal();
                        return;
                    }
                    Some(false) => return,
                    // A Create is still booting the pod: wait for its end.
                    None => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        });
    }

    /// Shutdown: the shim goes once it has no task left.
    pub async fn shutdown(&self) {
        let pod = {
            let mut state = self.lock();
            if !state.containers.is_empty() || !state.creating.is_empty() {
                return;
            }
            state.pod_stopped = true;
            state.pod.take()
        };
        if let Some(pod) = pod {
            Self::stop_pod(pod.as_ref(), self.deadlines()).await;
        }
        self.inner.exit.signal();
    }

    /// Asks the guest to power off, then stops the VM; a guest that does
    /// not answer in time has its VM killed.
    async fn stop_pod(pod: &dyn PodVm, deadlines: &Deadlines) {
        if pod.gone().borrow().is_none() {
            let agent = pod.agent();
            match Self::call(
                pod,
                "DestroySandbox",
                deadlines.destroy,
                agent.destroy_sandbox(),
            )
            .await
            {
                Answer::Answered(Ok(())) => {}
                Answer::Answered(Err(err)) => tracing::warn!(%err, "tearing the sandbox down"),
                Answer::TimedOut(err) => Self::kill_vm(pod, &err),
            }
        }
        pod.stop().await;
    }
}

/// A process whose VM died under it.
fn lost_exit() -> Exit {
    Exit {
        status: VM_GONE_EXIT_STATUS,
        at: SystemTime::now(),
    }
}

fn process_id(container: &str, exec_id: &str) -> ProcessId {
    ProcessId {
        container: container.to_owned(),
        exec: (!exec_id.is_empty()).then(|| exec_id.to_owned()),
    }
}

fn container<'a>(state: &'a State, id: &str) -> Result<&'a Container> {
    state
        .containers
        .get(id)
        .ok_or_else(|| ShimError::NotFound(format!("task {id}")))
}

fn container_mut<'a>(state: &'a mut State, id: &str) -> Result<&'a mut Container> {
    state
        .containers
        .get_mut(id)
        .ok_or_else(|| ShimError::NotFound(format!("task {id}")))
}

/// Ids become directory names on the host: keep them plain.
fn check_id(field: &str, id: &str) -> Result<()> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if plain {
        Ok(())
    } else {
        Err(ShimError::invalid(
            field,
            format!("{id:?} is not a plain identifier"),
        ))
    }
}

/// The bundle's record of which pod directory holds its container, for the
/// cleanup after a shim crash.
pub fn pod_dir_record(bundle: &Path) -> PathBuf {
    bundle.join("hull-pod-dir")
}
