//! Delete: forgets a process that ended (or never started); for a
//! container, also removes it from the guest and releases its host side;
//! the pod's last container stops the VM. It always ends: a RemoveContainer
//! that is not answered in time is given up, and the container's host side
//! is released even so.

use containerd_shim::protos::api;
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::topics;

use super::{Answer, Tasks, process_id};
use crate::error::{Result, ShimError};
use crate::events::timestamp;
use crate::task::Exit;

impl Tasks {
    pub async fn delete(&self, request: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let id = process_id(&request.id, &request.exec_id);
        // Everything the Delete changes in the state, at once: a Delete
        // that then waits on the guest leaves nothing half-done behind it.
        let (exit, pid, removed, last, pod) = {
            let mut state = self.lock();
            let container = state
                .containers
                .get_mut(&request.id)
                .ok_or_else(|| ShimError::NotFound(format!("task {}", request.id)))?;
            let process = container.process(&request.exec_id)?;
            if !process.status().deletable() {
                return Err(ShimError::FailedPrecondition(format!(
                    "{} is {}: kill it before deleting it",
                    process.id,
                    process.status().name()
                )));
            }
            let exit = process.exit().unwrap_or(Exit {
                status: 0,
                at: std::time::SystemTime::now(),
            });
            let pid = process.pid;
            if id.exec.is_some() {
                container.execs.remove(&request.exec_id);
            }
            state.copiers.remove(&id);
            state.pending_execs.remove(&id);
            if id.exec.is_some() {
                (exit, pid, None, false, None)
            } else {
                let removed = state.containers.remove(&request.id);
                state
                    .pending_execs
                    .retain(|process, _| process.container != request.id);
                state
                    .copiers
                    .retain(|process, _| process.container != request.id);
                let last = state.containers.is_empty() && state.creating.is_empty();
                let pod = if last {
                    state.pod_stopped = true;
                    state.pod.take()
                } else {
                    state.pod.clone()
                };
                (exit, pid, removed, last, pod)
            }
        };
        let response = api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        };
        let Some(mut container) = removed else {
            return Ok(response);
        };
        // The container goes from the guest if the guest is still there; a
        // dead VM or agent must not keep containerd from deleting the task.
        if let Some(pod) = &pod
            && pod.gone().borrow().is_none()
        {
            tracing::debug!(task = %request.id, "removing the container in the guest");
            let agent = pod.agent();
            match Self::call(
                pod.as_ref(),
                "RemoveContainer",
                self.deadlines().call,
                agent.remove_container(&request.id),
            )
            .await
            {
                Answer::Answered(Ok(())) => {}
                Answer::Answered(Err(err)) => {
                    tracing::warn!(task = %request.id, %err, "removing the container in the guest");
                }
                // The container's processes are gone already (Delete
                // follows their exit or the VM's death), so a slow guest
                // costs this container only: what it still holds in the
                // guest goes with the VM when the pod stops, whose
                // DestroySandbox has its own deadline. Killing the VM here
                // took the pod's other containers with it whenever a busy
                // guest took a few seconds over two removals at once.
                Answer::TimedOut(err) => {
                    tracing::warn!(task = %request.id, %err, "the guest did not remove the container in time: it goes with the pod's VM");
                }
            }
        }
        container.host.release();
        crate::logging::remove_bundle(&container.bundle);
        self.events().publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(events::TaskDelete {
                container_id: request.id.clone(),
                id: request.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            }),
        );
        // The pod's last container takes the VM with it.
        if last {
            if let Some(pod) = pod {
                tracing::debug!(task = %request.id, "the pod's last task is gone: stopping the pod");
                Self::stop_pod(pod.as_ref(), self.deadlines()).await;
            }
            self.exit_if_abandoned(self.deadlines().abandoned);
        }
        Ok(response)
    }
}
