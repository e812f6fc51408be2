//! The pod's tasks: what each Task API call does, over the state machine in
//! [`crate::task`], the pod's VM and the guest agent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim::protos::api;
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::topics;
use hull_proto::v1 as agent_api;
use tokio::sync::Mutex;

use crate::agent::Agent;
use crate::config::Config;
use crate::error::{Result, ShimError};
use crate::events::{Events, timestamp};
use crate::mounts::ContainerMounts;
use crate::pod::{Pod, PodSpec};
use crate::stdio::{Copiers, report_lost};
use crate::task::{Container, Event, Exit, Process, ProcessId, Status, StdioPaths};

/// CRI's annotations: the pod a container belongs to, and its role.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// The exit status of a process whose VM died under it (containerd shows
/// it as an error exit, like runc's 255 for a lost process).
pub const VM_GONE_EXIT_STATUS: u32 = 255;
/// How long output copiers may take once the VM is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shim left without a task waits for containerd's Shutdown
/// before it exits on its own (after the boot timeout, when its pod never
/// started): `Tasks::exit_if_abandoned`.
const ABANDONED_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    pod: Option<Pod>,
    containers: HashMap<String, Container>,
    /// Exec specs kept from Exec until Start runs them.
    pending_execs: HashMap<ProcessId, Vec<u8>>,
    copiers: HashMap<ProcessId, Copiers>,
}

#[derive(Clone)]
pub struct Tasks {
    state: Arc<Mutex<State>>,
    events: Events,
    /// Set once no task is left and containerd asked the shim to go.
    pub exit: Arc<containerd_shim::ExitSignal>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").finish_non_exhaustive()
    }
}

/// The runtime options containerd passes with CRI (`runtimeoptions.v1`).
#[derive(Clone, PartialEq, prost::Message)]
struct RuntimeOptions {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(string, tag = "2")]
    config_path: String,
}

fn config_path_option(
    options: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
) -> Option<String> {
    let any = options?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    <RuntimeOptions as prost::Message>::decode(any.value.as_slice())
        .ok()
        .map(|options| options.config_path)
}

impl Tasks {
    pub fn new(events: Events, exit: Arc<containerd_shim::ExitSignal>) -> Self {
        Self {
            state: Arc::default(),
            events,
            exit,
        }
    }

    pub async fn create(&self, request: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        if self.state.lock().await.pod.is_none() {
            self.exit_if_abandoned(crate::pod::BOOT_TIMEOUT + ABANDONED_GRACE);
        }
        self.create_task(request).await
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
    /// So `after` that (for a Create, once any boot has ended), a shim with
    /// neither a pod nor a task exits by itself.
    fn exit_if_abandoned(&self, after: Duration) {
        let tasks = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // Waits for a Create still in progress.
            let state = tasks.state.lock().await;
            if state.pod.is_none() && state.containers.is_empty() {
                tracing::warn!("no pod and no task, and no Shutdown came: exiting");
                tasks.exit.signal();
            }
        });
    }

    async fn create_task(
        &self,
        request: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse> {
        let id = request.id.clone();
        check_id("id", &id)?;
        let bundle = PathBuf::from(&request.bundle);
        let mut spec = crate::spec::read_bundle(&bundle)?;
        let annotations = crate::spec::annotations(&spec);
        let mut state = self.state.lock().await;
        if state.containers.contains_key(&id) {
            return Err(ShimError::AlreadyExists(format!("task {id}")));
        }
        if state.pod.is_none() {
            let config = Config::load(&Config::path(
                config_path_option(request.options.as_ref()).as_deref(),
            ))?;
            crate::logging::set_level(&config.log_level);
            let (vcpus, memory_mib) = config.pod_size(&annotations)?;
            let pod_id = annotations
                .get(SANDBOX_ID_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| id.clone());
            let hostname = spec
                .get("hostname")
                .and_then(|h| h.as_str())
                .unwrap_or_default()
                .to_owned();
            // Recorded before the boot, so that the `delete` command finds
            // the pod's VM if this shim dies while it boots.
            let record = pod_dir_record(&bundle);
            std::fs::write(
                &record,
                config
                    .state_dir
                    .join(&pod_id)
                    .as_os_str()
                    .as_encoded_bytes(),
            )
            .map_err(ShimError::io(format!("writing {}", record.display())))?;
            let pod = Pod::start(
                &config,
                &PodSpec {
                    id: pod_id,
                    vcpus,
                    memory_mib,
                    hostname,
                    netns: crate::spec::network_namespace(&spec),
                    cgroups_path: crate::spec::cgroups_path(&spec)?,
                },
            )
            .await?;
            self.watch_oom(pod.agent());
            state.pod = Some(pod);
        }
        let pod = state
            .pod
            .as_ref()
            .ok_or_else(|| ShimError::VmGone("no VM".into()))?;
        if let Some(reason) = pod.gone().borrow().clone() {
            return Err(ShimError::VmGone(reason));
        }
        let record = pod_dir_record(&bundle);
        std::fs::write(&record, pod.dir().as_os_str().as_encoded_bytes())
            .map_err(ShimError::io(format!("writing {}", record.display())))?;
        let container_dir = pod.shared().container_dir(&id);
        let mut mounts = ContainerMounts::new(&container_dir)?;
        let rootfs = container_dir.join("rootfs");
        mounts.rootfs(
            &request.rootfs,
            &crate::spec::root_path(&spec, &bundle),
            &rootfs,
        )?;
        crate::spec::for_guest(&mut spec, pod.shared(), &container_dir, &mut mounts)?;
        crate::spec::limit_pids(&mut spec, pod.default_pids_limit);
        let guest_rootfs = pod
            .shared()
            .guest_path(&rootfs)
            .ok_or_else(|| ShimError::invalid("rootfs", "outside the shared directory"))?;
        let stdio = StdioPaths {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        };
        let mut agent = pod.agent();
        let pid = agent
            .create_container(agent_api::CreateContainerRequest {
                container_id: id.clone(),
                oci_spec_json: serde_json::to_vec(&spec)
                    .map_err(|err| ShimError::invalid("config.json", err.to_string()))?,
                rootfs: guest_rootfs,
                stdio: Some(stdio.to_agent()),
            })
            .await?
            .into_inner()
            .pid;
        let process_id = ProcessId {
            container: id.clone(),
            exec: None,
        };
        let copiers = match Copiers::attach(&agent, &process_id, &stdio).await {
            Ok(copiers) => copiers,
            Err(err) => {
                let _ = agent
                    .remove_container(agent_api::RemoveContainerRequest {
                        container_id: id.clone(),
                        force: true,
                    })
                    .await;
                return Err(err);
            }
        };
        state.copiers.insert(process_id.clone(), copiers);
        crate::logging::add_bundle(&bundle);
        state.containers.insert(
            id.clone(),
            Container {
                id: id.clone(),
                bundle: bundle.clone(),
                init: Process::new(process_id, pid, stdio.clone()),
                execs: HashMap::new(),
                mounts,
            },
        );
        self.events.publish(
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

    pub async fn start(&self, request: api::StartRequest) -> Result<api::StartResponse> {
        let mut state = self.state.lock().await;
        let (mut agent, gone) = pod_handles(&state)?;
        let id = ProcessId {
            container: request.id.clone(),
            exec: (!request.exec_id.is_empty()).then(|| request.exec_id.clone()),
        };
        let process = container(&state, &request.id)?.process(&request.exec_id)?;
        process.status().next(Event::Start, &id.to_string())?;
        let stdio = process.stdio.clone();
        let pid = match &id.exec {
            Some(exec) => {
                let spec = state.pending_execs.remove(&id).ok_or_else(|| {
                    ShimError::FailedPrecondition(format!("{id} has no process spec"))
                })?;
                let pid = agent
                    .exec_process(agent_api::ExecProcessRequest {
                        container_id: request.id.clone(),
                        exec_id: exec.clone(),
                        process_json: spec,
                        stdio: Some(stdio.to_agent()),
                    })
                    .await?
                    .into_inner()
                    .pid;
                let copiers = Copiers::attach(&agent, &id, &stdio).await?;
                state.copiers.insert(id.clone(), copiers);
                pid
            }
            None => {
                agent
                    .start_container(agent_api::StartContainerRequest {
                        container_id: request.id.clone(),
                    })
                    .await?;
                process.pid
            }
        };
        let process = container_mut(&mut state, &request.id)?.process_mut(&request.exec_id)?;
        process.pid = pid;
        process.apply(Event::Start)?;
        self.watch_exit(id.clone(), pid, agent, gone);
        match id.exec {
            Some(exec_id) => self.events.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(events::TaskExecStarted {
                    container_id: request.id,
                    exec_id,
                    pid,
                    ..Default::default()
                }),
            ),
            None => self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(events::TaskStart {
                    container_id: request.id,
                    pid,
                    ..Default::default()
                }),
            ),
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Waits for the process's exit in the agent (or the VM's death), lets
    /// its output drain to containerd, then records the exit and tells
    /// containerd.
    fn watch_exit(
        &self,
        id: ProcessId,
        pid: u32,
        mut agent: Agent,
        mut gone: tokio::sync::watch::Receiver<Option<String>>,
    ) {
        let tasks = self.clone();
        tokio::spawn(async move {
            let waited = tokio::select! {
                waited = agent.wait_process(agent_api::WaitProcessRequest { process: Some(id.to_agent()) }) => Some(waited),
                _ = gone.wait_for(Option::is_some) => None,
            };
            // The exit, and why the process was lost if its VM died under it.
            let (exit, lost) = match waited {
                Some(Ok(response)) => {
                    let response = response.into_inner();
                    let at = SystemTime::UNIX_EPOCH
                        + Duration::from_nanos(response.exited_at_unix_nanos.max(0) as u64);
                    let status = response.exit_status as u32;
                    (Exit { status, at }, None)
                }
                Some(Err(status)) => {
                    // Most often the VM died under the process: say what died.
                    let reason = match tokio::time::timeout(
                        Duration::from_secs(2),
                        gone.wait_for(Option::is_some),
                    )
                    .await
                    {
                        Ok(Ok(reason)) => reason.clone().unwrap_or_default(),
                        _ => status.to_string(),
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
            let copiers = tasks.state.lock().await.copiers.remove(&id);
            let outputs = match copiers {
                Some(copiers) => copiers.finish(DRAIN_TIMEOUT).await,
                None => Vec::new(),
            };
            if let Some(reason) = lost {
                report_lost(outputs, &format!("the pod's VM is gone: {reason}")).await;
            }
            tasks.record_exit(&id, pid, exit).await;
        });
    }

    async fn record_exit(&self, id: &ProcessId, pid: u32, exit: Exit) {
        let mut state = self.state.lock().await;
        let Some(container) = state.containers.get_mut(&id.container) else {
            return;
        };
        let Ok(process) = container.process_mut(id.exec.as_deref().unwrap_or_default()) else {
            return;
        };
        if process.exited(exit) {
            self.events.publish(
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

    /// Forwards the guest's OOM kills as TaskOOM events.
    fn watch_oom(&self, mut agent: Agent) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let Ok(stream) = agent.oom_events(agent_api::OomEventsRequest {}).await else {
                return;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(event)) = stream.message().await {
                events.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(events::TaskOOM {
                        container_id: event.container_id,
                        ..Default::default()
                    }),
                );
            }
        });
    }

    pub async fn delete(&self, request: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let mut state = self.state.lock().await;
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
            at: SystemTime::now(),
        });
        let pid = process.pid;
        let process_id = process.id.clone();
        let response = api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        };
        state.copiers.remove(&process_id);
        state.pending_execs.remove(&process_id);
        if !request.exec_id.is_empty() {
            if let Some(container) = state.containers.get_mut(&request.id) {
                container.execs.remove(&request.exec_id);
            }
            return Ok(response);
        }
        // The container goes from the guest if the guest is still there; a
        // dead VM or agent must not keep containerd from deleting the task.
        if let Ok((mut agent, _)) = pod_handles(&state) {
            tracing::debug!(task = %request.id, "removing the container in the guest");
            let removed = agent
                .remove_container(agent_api::RemoveContainerRequest {
                    container_id: request.id.clone(),
                    force: true,
                })
                .await;
            if let Err(status) = removed {
                tracing::warn!(task = %request.id, %status, "removing the container in the guest");
            }
        }
        if let Some(mut container) = state.containers.remove(&request.id) {
            container.mounts.release();
            crate::logging::remove_bundle(&container.bundle);
        }
        self.events.publish(
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
        if state.containers.is_empty() {
            if let Some(pod) = state.pod.take() {
                tracing::debug!(task = %request.id, "the pod's last task is gone: stopping the pod");
                pod.stop().await;
            }
            self.exit_if_abandoned(ABANDONED_GRACE);
        }
        Ok(response)
    }

    pub async fn exec(&self, request: api::ExecProcessRequest) -> Result<()> {
        check_id("exec_id", &request.exec_id)?;
        let spec = request
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| ShimError::invalid("spec", "is missing"))?;
        let mut state = self.state.lock().await;
        let container = state
            .containers
            .get_mut(&request.id)
            .ok_or_else(|| ShimError::NotFound(format!("task {}", request.id)))?;
        let id = ProcessId {
            container: request.id.clone(),
            exec: Some(request.exec_id.clone()),
        };
        let stdio = StdioPaths {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        };
        container.add_exec(Process::new(id.clone(), 0, stdio))?;
        state.pending_execs.insert(id, spec);
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(events::TaskExecAdded {
                container_id: request.id,
                exec_id: request.exec_id,
                ..Default::default()
            }),
        );
        Ok(())
    }

    pub async fn kill(&self, request: api::KillRequest) -> Result<()> {
        let state = self.state.lock().await;
        let container = state
            .containers
            .get(&request.id)
            .ok_or_else(|| ShimError::NotFound(format!("task {}", request.id)))?;
        let process = container.process(&request.exec_id)?;
        if process.status() == Status::Stopped {
            return Err(ShimError::NotFound(format!(
                "{}: process already finished",
                process.id
            )));
        }
        let target = process.id.to_agent();
        let (mut agent, _) = pod_handles(&state)?;
        drop(state);
        agent
            .signal_process(agent_api::SignalProcessRequest {
                process: Some(target),
                signal: request.signal,
                all: request.all,
            })
            .await?;
        Ok(())
    }

    pub async fn state(&self, request: api::StateRequest) -> Result<api::StateResponse> {
        let state = self.state.lock().await;
        let container = state
            .containers
            .get(&request.id)
            .ok_or_else(|| ShimError::NotFound(format!("task {}", request.id)))?;
        let process = container.process(&request.exec_id)?;
        let exit = process.exit();
        Ok(api::StateResponse {
            id: request.id.clone(),
            bundle: container.bundle.display().to_string(),
            pid: process.pid,
            status: process.status().to_api().into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            exec_id: request.exec_id.clone(),
            ..Default::default()
        })
    }

    pub async fn wait(&self, request: api::WaitRequest) -> Result<api::WaitResponse> {
        let mut exit = {
            let state = self.state.lock().await;
            let container = state
                .containers
                .get(&request.id)
                .ok_or_else(|| ShimError::NotFound(format!("task {}", request.id)))?;
            container.process(&request.exec_id)?.exit_watch()
        };
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ShimError::NotFound(format!("task {} was deleted", request.id)))?
            .ok_or_else(|| ShimError::NotFound(format!("task {}", request.id)))?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    /// Pause and Resume freeze the container's cgroup in the guest.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let mut state = self.state.lock().await;
        let (mut agent, _) = pod_handles(&state)?;
        let container = state
            .containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?;
        container.init.status().next(
            if paused { Event::Pause } else { Event::Resume },
            &format!("task {id}"),
        )?;
        if paused {
            agent
                .pause_container(agent_api::PauseContainerRequest {
                    container_id: id.to_owned(),
                })
                .await?;
        } else {
            agent
                .resume_container(agent_api::ResumeContainerRequest {
                    container_id: id.to_owned(),
                })
                .await?;
        }
        container
            .init
            .apply(if paused { Event::Pause } else { Event::Resume })?;
        if paused {
            self.events.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(events::TaskPaused {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            );
        } else {
            self.events.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(events::TaskResumed {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            );
        }
        Ok(())
    }

    pub async fn pids(&self, id: &str) -> Result<api::PidsResponse> {
        let (mut agent, _) = {
            let state = self.state.lock().await;
            if !state.containers.contains_key(id) {
                return Err(ShimError::NotFound(format!("task {id}")));
            }
            pod_handles(&state)?
        };
        let processes = agent
            .list_processes(agent_api::ListProcessesRequest {
                container_id: id.to_owned(),
            })
            .await?
            .into_inner()
            .processes;
        Ok(api::PidsResponse {
            processes: processes
                .into_iter()
                .map(|p| api::ProcessInfo {
                    pid: p.pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    pub async fn agent_for(&self, id: &str) -> Result<Agent> {
        let state = self.state.lock().await;
        if !state.containers.contains_key(id) {
            return Err(ShimError::NotFound(format!("task {id}")));
        }
        Ok(pod_handles(&state)?.0)
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let mut state = self.state.lock().await;
        let process_id = ProcessId {
            container: id.to_owned(),
            exec: (!exec_id.is_empty()).then(|| exec_id.to_owned()),
        };
        if let Some(copiers) = state.copiers.get_mut(&process_id) {
            copiers.close_stdin();
        }
        let (mut agent, _) = pod_handles(&state)?;
        drop(state);
        agent
            .close_stdin(agent_api::CloseStdinRequest {
                process: Some(process_id.to_agent()),
            })
            .await?;
        Ok(())
    }

    pub async fn init_pid(&self, id: &str) -> Option<u32> {
        self.state
            .lock()
            .await
            .containers
            .get(id)
            .map(|c| c.init.pid)
    }

    /// Shutdown: the shim goes once it has no task left.
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        if !state.containers.is_empty() {
            return;
        }
        if let Some(pod) = state.pod.take() {
            pod.stop().await;
        }
        self.exit.signal();
    }
}

/// A process whose VM died under it.
fn lost_exit() -> Exit {
    Exit {
        status: VM_GONE_EXIT_STATUS,
        at: SystemTime::now(),
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

fn pod_handles(state: &State) -> Result<(Agent, tokio::sync::watch::Receiver<Option<String>>)> {
    let pod = state
        .pod
        .as_ref()
        .ok_or_else(|| ShimError::VmGone("the pod has no VM".into()))?;
    let gone = pod.gone();
    if let Some(reason) = gone.borrow().clone() {
        return Err(ShimError::VmGone(reason));
    }
    Ok((pod.agent(), gone))
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
