//! CreateContainer, StartContainer, RemoveContainer, Pause, Resume, Update
//! and Stats.

use std::sync::Arc;
use std::time::Duration;

use hull_proto::v1 as api;

use super::{Agent, remove_dir, stdio_request};
use crate::cgroup;
use crate::error::{AgentError, Result};
use crate::ids;
use crate::runtime::Operation;
use crate::spec;
use crate::state::{Container, Process, Status};

/// How long killed processes get to be reaped before removal gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// When the container's init exits, whatever else runs in the container is
/// killed, as runc's shim does: in a PID namespace of its own the kernel
/// has done it already, but in the pod's (CRI's default) or the guest's a
/// child the init left behind would run on, and holding the init's stdout
/// it would keep the init's exit from ever being reported (its output never
/// ends), so StopPodSandbox waited for it forever.
fn end_with_init(container: &Arc<Container>) {
    let init = Arc::clone(&container.init);
    let cgroup = container.cgroup.clone();
    let id = container.id.clone();
    tokio::spawn(async move {
        init.exit().await;
        match cgroup::kill_all(&cgroup) {
            Ok(()) => {
                tracing::debug!(container = %id, "init exited: killed the rest of the container")
            }
            // Removed with the container meanwhile: nothing left to kill.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(container = %id, %err, "init exited, but the rest of the container could not be killed")
            }
        }
    });
}

/// Everything CreateContainer checks before it changes anything: the id,
/// the OCI spec and the rootfs (which is only looked at). Public for the
/// fuzz targets, which feed it any request.
pub fn validate_create_container(
    request: &api::CreateContainerRequest,
) -> Result<oci_spec::runtime::Spec> {
    ids::validate("container_id", &request.container_id)?;
    let terminal = stdio_request(request.stdio.as_ref()).terminal;
    spec::container_spec(
        &request.container_id,
        &request.oci_spec_json,
        &request.rootfs,
        terminal,
    )
}

impl Agent {
    pub async fn create_container(
        &self,
        request: api::CreateContainerRequest,
    ) -> Result<api::CreateContainerResponse> {
        let mut spec = validate_create_container(&request)?;
        // Only in a guest: there the agent's network namespace is the
        // pod's. On a host (test mode) it is the host's, and libcontainer
        // refuses them as runc would.
        if self.config.pid1 {
            let sysctls = spec::take_guest_net_sysctls(&mut spec)?;
            crate::sysctl::apply(std::path::Path::new("/proc/sys"), &sysctls)?;
            // The pod's propagating volumes, shared in the guest before a
            // container's bind of one is made (crate::propagation).
            let shared = self.config.sandbox_dir().join("shared");
            for source in crate::propagation::sources(&spec, &shared) {
                crate::propagation::make_shared(&source)?;
            }
        }
        self.mount_pod_mounts(&request.pod_mounts).await?;
        let id = request.container_id;
        let stdio = stdio_request(request.stdio.as_ref());
        let reservation = self.containers.reserve(&id)?;
        let cgroup = spec::cgroup_dir(&spec, &self.config.cgroup_root);

        // libcontainer creates each missing directory of the cgroup path
        // with a plain mkdir after an exists check, so two containers
        // created at once race on their common parent and one fails with
        // EEXIST. create_dir_all does not mind a parent made meanwhile.
        if let Some(parent) = cgroup.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|err| AgentError::io(format!("creating {}", parent.display()), err))?;
        }
        let bundle = self.bundle_dir(&id);
        std::fs::create_dir_all(&bundle)
            .map_err(|err| AgentError::io(format!("creating {}", bundle.display()), err))?;
        let created = async {
            spec.save(bundle.join("config.json"))
                .map_err(|err| AgentError::Runtime(format!("writing config.json: {err}")))?;
            self.spawn_process(&id, stdio, |stdio| Operation::Create {
                bundle: bundle.clone(),
                stdio,
            })
            .await
        }
        .await;
        let (pid, io) = match created {
            Ok(created) => created,
            Err(err) => {
                remove_dir(&bundle);
                return Err(err);
            }
        };

        let init = Process::new(format!("{id}/init"), pid, io, self.reaper.watch(pid));
        let container = Arc::new(Container::new(id.clone(), bundle, cgroup, init));
        self.watch_oom(&container);
        end_with_init(&container);
        reservation.commit(container);
        tracing::info!(container = %id, pid, "created");
        Ok(api::CreateContainerResponse { pid: pid as u32 })
    }

    pub async fn start_container(
        &self,
        request: api::StartContainerRequest,
    ) -> Result<api::StartContainerResponse> {
        let container = self.container(&request.container_id)?;
        let _operations = container.operations.lock().await;
        container.require("start", &[Status::Created])?;
        self.runtime
            .run(&container.id, Operation::Start, None)
            .await?;
        container.set_status(Status::Running);
        Ok(api::StartContainerResponse {})
    }

    pub async fn remove_container(
        &self,
        request: api::RemoveContainerRequest,
    ) -> Result<api::RemoveContainerResponse> {
        let container = self.container(&request.container_id)?;
        self.remove(&container, request.force).await?;
        Ok(api::RemoveContainerResponse {})
    }

    /// Kills what is left of the container when `force`, then removes its
    /// cgroup, runtime state and bundle.
    pub(super) async fn remove(&self, container: &Arc<Container>, force: bool) -> Result<()> {
        let _operations = container.operations.lock().await;
        let alive: Vec<Arc<Process>> = container
            .processes()
            .into_iter()
            .filter(|process| process.exited().is_none())
            .collect();
        if !alive.is_empty() {
            if !force {
                return Err(AgentError::FailedPrecondition(format!(
                    "cannot remove container {:?}: {} of its processes are running; \
                     kill them first or set force",
                    container.id,
                    alive.len()
                )));
            }
            if let Err(err) = cgroup::kill_all(&container.cgroup) {
                tracing::warn!(container = %container.id, %err, "cgroup.kill failed; signalling each process");
                for process in &alive {
                    let _ = process.signal(libc::SIGKILL);
                }
            }
            let all_exited = futures::future::join_all(alive.iter().map(|p| p.exit()));
            tokio::time::timeout(KILL_TIMEOUT, all_exited)
                .await
                .map_err(|_| {
                    AgentError::Runtime(format!(
                        "container {:?}: processes still alive {KILL_TIMEOUT:?} after SIGKILL",
                        container.id
                    ))
                })?;
        }
        self.runtime
            .run(&container.id, Operation::Delete { force: true }, None)
            .await?;
        self.stop_oom_watch(&container.id);
        remove_dir(&container.bundle);
        self.containers.remove(&container.id);
        tracing::info!(container = %container.id, "removed");
        Ok(())
    }

    pub async fn pause_container(
        &self,
        request: api::PauseContainerRequest,
    ) -> Result<api::PauseContainerResponse> {
        let container = self.container(&request.container_id)?;
        let _operations = container.operations.lock().await;
        container.require("pause", &[Status::Running])?;
        self.runtime
            .run(&container.id, Operation::Pause, None)
            .await?;
        container.set_status(Status::Paused);
        Ok(api::PauseContainerResponse {})
    }

    pub async fn resume_container(
        &self,
        request: api::ResumeContainerRequest,
    ) -> Result<api::ResumeContainerResponse> {
        let container = self.container(&request.container_id)?;
        let _operations = container.operations.lock().await;
        container.require("resume", &[Status::Paused])?;
        self.runtime
            .run(&container.id, Operation::Resume, None)
            .await?;
        container.set_status(Status::Running);
        Ok(api::ResumeContainerResponse {})
    }

    pub async fn update_container(
        &self,
        request: api::UpdateContainerRequest,
    ) -> Result<api::UpdateContainerResponse> {
        let container = self.container(&request.container_id)?;
        let resources = spec::resources(&request.resources_json)?;
        let _operations = container.operations.lock().await;
        container.require(
            "update",
            &[Status::Created, Status::Running, Status::Paused],
        )?;
        let path = container.bundle.join("resources.json");
        let json = serde_json::to_vec(&resources)
            .map_err(|err| AgentError::Runtime(format!("encoding resources: {err}")))?;
        std::fs::write(&path, json)
            .map_err(|err| AgentError::io(format!("writing {}", path.display()), err))?;
        let result = self
            .runtime
            .run(
                &container.id,
                Operation::Update {
                    resources_json: path.clone(),
                },
                None,
            )
            .await;
        let _ = std::fs::remove_file(&path);
        result.map(|_| api::UpdateContainerResponse {})
    }

    pub async fn stats_container(
        &self,
        request: api::StatsContainerRequest,
    ) -> Result<api::StatsContainerResponse> {
        let container = self.container(&request.container_id)?;
        let dir = container.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup::stats(&dir))
            .await
            .map_err(|err| AgentError::Runtime(format!("stats: {err}")))?
            .map_err(|err| AgentError::io(format!("stats of container {:?}", container.id), err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_is_checked_whole() {
        let mut request = api::CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec_json: br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#.to_vec(),
            rootfs: "/".into(),
            stdio: Some(api::Stdio {
                terminal: true,
                ..Default::default()
            }),
            pod_mounts: Vec::new(),
        };
        let spec = validate_create_container(&request).expect("valid");
        assert_eq!(
            spec.process().as_ref().and_then(|p| p.terminal()),
            Some(true)
        );

        request.container_id = "../c1".into();
        let err = validate_create_container(&request).unwrap_err().to_string();
        assert!(err.starts_with("container_id: "), "{err}");

        request.container_id = "c1".into();
        request.rootfs = "rootfs".into();
        let err = validate_create_container(&request).unwrap_err().to_string();
        assert!(err.starts_with("rootfs: "), "{err}");
    }
}
