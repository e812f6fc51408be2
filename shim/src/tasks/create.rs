//! Create: boots the pod on the first container (once, whoever comes
//! first), sets up the container's host side and creates it in the guest.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::protos::api;
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::topics;
use hull_proto::v1 as agent_api;

use super::{Tasks, check_id};
use crate::error::{Result, ShimError};
use crate::task::seam::PodVm;
use crate::task::{Container, Process, ProcessId, StdioPaths};

/// Releases the id's reservation however Create ends.
struct Reservation<'a> {
    tasks: &'a Tasks,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.tasks.lock().creating.remove(&self.id);
    }
}

impl Tasks {
    pub async fn create(&self, request: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        if self.inner.booted.get().is_none() {
            self.exit_if_abandoned(self.deadlines().abandoned_after_boot);
        }
        let id = request.id.clone();
        check_id("id", &id)?;
        let bundle = PathBuf::from(&request.bundle);
        let spec = crate::spec::read_bundle(&bundle)?;
        {
            let mut state = self.lock();
            if state.containers.contains_key(&id) || !state.creating.insert(id.clone()) {
                return Err(ShimError::AlreadyExists(format!("task {id}")));
            }
        }
        let _reservation = Reservation {
            tasks: self,
            id: id.clone(),
        };
        let pod = self.boot_once(&request, &spec).await?;
        if let Some(reason) = pod.gone().borrow().clone() {
            return Err(ShimError::VmGone(reason));
        }
        let mut prepared = pod.prepare(&id, &bundle, spec, &request.rootfs)?;
        let stdio = StdioPaths {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        };
        let process_id = ProcessId {
            container: id.clone(),
            exec: None,
        };
        let agent = pod.agent();
        let created = async {
            let pid = Self::bounded(
                pod.as_ref(),
                "CreateContainer",
                self.deadlines().create,
                agent.create_container(agent_api::CreateContainerRequest {
                    container_id: id.clone(),
                    oci_spec_json: std::mem::take(&mut prepared.oci_spec_json),
                    rootfs: prepared.guest_rootfs.clone(),
                    stdio: Some(stdio.to_agent()),
                    pod_mounts: std::mem::take(&mut prepared.pod_mounts),
                }),
            )
            .await?;
            let copiers = match Self::bounded(
                pod.as_ref(),
                "ReadOutput",
                self.deadlines().call,
                agent.attach_stdio(&process_id, &stdio),
            )
            .await
            {
                Ok(copiers) => copiers,
                Err(err) => {
                    let removed = Self::bounded(
                        pod.as_ref(),
                        "RemoveContainer",
                        self.deadlines().call,
                        agent.remove_container(&id),
                    )
                    .await;
                    if let Err(err) = removed {
                        tracing::warn!(task = %id, %err, "removing a container whose stdio failed");
                    }
                    return Err(err);
                }
            };
            Ok::<_, ShimError>((pid, copiers))
        }
        .await;
        let (pid, copiers) = match created {
            Ok(created) => created,
            Err(err) => {
                prepared.host.release();
                return Err(err);
            }
        };
        crate::logging::add_bundle(&bundle);
        {
            let mut state = self.lock();
            state.copiers.insert(process_id.clone(), copiers);
            state.containers.insert(
                id.clone(),
                Container {
                    id: id.clone(),
                    bundle: bundle.clone(),
                    init: Process::new(process_id, pid, stdio.clone()),
                    execs: Default::default(),
                    host: prepared.host,
                },
            );
        }
        self.events().publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(events::TaskCreate {
                container_id: id,
                bundle: request.bundle,
                rootfs: request.rootfs,
                io: Some(events::TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// The pod, booted by the first Create: the others wait for that boot,
    /// and a failed boot is tried again by the next Create. Nothing else
    /// waits: State, Kill and the rest never touch the boot.
    async fn boot_once(
        &self,
        request: &api::CreateTaskRequest,
        spec: &serde_json::Value,
    ) -> Result<Arc<dyn PodVm>> {
        let stopped = self.lock().pod_stopped;
        if stopped {
            return Err(ShimError::VmGone("the pod was stopped".into()));
        }
        let pod = self
            .inner
            .booted
            .get_or_try_init(|| async {
                let pod = self.inner.booter.boot(request, spec).await?;
                self.lock().pod = Some(Arc::clone(&pod));
                self.watch_oom(Arc::clone(&pod));
                Ok::<_, ShimError>(pod)
            })
            .await?;
        let stopped = self.lock().pod_stopped;
        if stopped {
            return Err(ShimError::VmGone("the pod was stopped".into()));
        }
        Ok(Arc::clone(pod))
    }
}
