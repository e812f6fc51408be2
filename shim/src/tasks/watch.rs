//! What the guest tells the shim unasked: the exits of started processes,
//! and OOM kills. Both are long-lived calls, so they have no deadline, but
//! both end when the VM is gone.

use std::sync::Arc;

use containerd_shim::protos::events::task as events;
use containerd_shim::protos::topics;
use futures::StreamExt;

use super::{Tasks, lost_exit};
use crate::events::timestamp;
use crate::stdio::report_lost;
use crate::task::seam::PodVm;
use crate::task::{Exit, ProcessId};

impl Tasks {
    /// Waits for the process's exit in the agent (or the VM's death), lets
    /// its output drain to containerd, then records the exit and tells
    /// containerd.
    pub(super) fn watch_exit(&self, id: ProcessId, pid: u32, pod: Arc<dyn PodVm>) {
        let tasks = self.clone();
        tokio::spawn(async move {
            let agent = pod.agent();
            let mut gone = pod.gone();
            let waited = tokio::select! {
                waited = agent.wait_process(&id) => Some(waited),
                _ = gone.wait_for(Option::is_some) => None,
            };
            // The exit, and why the process was lost if its VM died under it.
            let (exit, lost) = match waited {
                Some(Ok(exit)) => (exit, None),
                Some(Err(err)) => {
                    // Most often the VM died under the process: say what died.
                    let reason = match tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        gone.wait_for(Option::is_some),
                    )
                    .await
                    {
                        Ok(Ok(reason)) => reason.clone().unwrap_or_default(),
                        _ => err.to_string(),
                    };
                    tracing::error!(process = %id, %reason, "lost the process");
                    (lost_exit(), Some(reason))
                }
                None => {
                    let reason = gone.borrow().clone().unwrap_or_default();
                    tracing::error!(process = %id, %reason, "the process's VM is gone");
                    (lost_exit(), Some(reason))
                }
            };
            let copiers = tasks.lock().copiers.remove(&id);
            let outputs = match copiers {
                Some(copiers) => copiers.finish(tasks.deadlines().drain).await,
                None => Vec::new(),
            };
            if let Some(reason) = lost {
                report_lost(outputs, &format!("the pod's VM is gone: {reason}")).await;
            }
            tasks.record_exit(&id, pid, exit);
        });
    }

    fn record_exit(&self, id: &ProcessId, pid: u32, exit: Exit) {
        let recorded = {
            let mut state = self.lock();
            state
                .containers
                .get_mut(&id.container)
                .and_then(|container| {
                    container
                        .process_mut(id.exec.as_deref().unwrap_or_default())
                        .ok()
                })
                .is_some_and(|process| process.exited(exit))
        };
        if recorded {
            self.events().publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(events::TaskExit {
                    container_id: id.container.clone(),
                    id: id.exec.clone().unwrap_or_else(|| id.container.clone()),
                    pid,
                    exit_status: exit.status,
                    exited_at: Some(timestamp(exit.at)).into(),
                    ..Default::default()
                }),
            );
        }
    }

    /// Forwards the guest's OOM kills as TaskOOM events, for as long as the
    /// VM lives. The guest names the container, so an event is forwarded
    /// only for a container the shim knows, and at most `OOM_BURST` a
    /// second: a guest cannot make containerd see other pods' OOMs or fill
    /// the event queue.
    pub(super) fn watch_oom(&self, pod: Arc<dyn PodVm>) {
        let tasks = self.clone();
        tokio::spawn(async move {
            let mut gone = pod.gone();
            let watched = async {
                let mut stream = match pod.agent().oom_events().await {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(%err, "the guest's OOM events are not watched");
                        return;
                    }
                };
                while let Some(container_id) = stream.next().await {
                    tasks.forward_oom(container_id);
                }
            };
            tokio::select! {
                () = watched => {}
                _ = gone.wait_for(Option::is_some) => {}
            }
        });
    }

    fn forward_oom(&self, container_id: String) {
        if !self.lock().containers.contains_key(&container_id) {
            if let Some(refused) = self.inner.oom.allow() {
                // Not logged whole: the guest chose it.
                let named: String = container_id.chars().take(64).collect();
                tracing::warn!(container = %named.escape_debug(), refused, "an OOM event for a container the shim does not know was dropped");
            }
            return;
        }
        match self.inner.oom.allow() {
            Some(refused) => {
                if refused > 0 {
                    tracing::warn!(refused, "OOM events came too fast; some were dropped");
                }
                self.events().publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(events::TaskOOM {
                        container_id,
                        ..Default::default()
                    }),
                );
            }
            None => tracing::trace!("an OOM event was dropped: too many"),
        }
    }
}
