//! The verbs that read a task or act on it without changing its life:
//! State and Wait (from the shim's state alone, never waiting on the
//! guest), Pids, Stats, Pause and Resume, ResizePty, Update and CloseIO
//! (each one bounded call to the agent).

use containerd_shim::protos::api;
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::topics;
use hull_proto::v1 as agent_api;

use super::{Tasks, container, container_mut, process_id};
use crate::error::{Result, ShimError};
use crate::events::timestamp;
use crate::task::Event;

impl Tasks {
    pub fn state(&self, request: &api::StateRequest) -> Result<api::StateResponse> {
        let state = self.lock();
        let container = container(&state, &request.id)?;
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
            let state = self.lock();
            container(&state, &request.id)?
                .process(&request.exec_id)?
                .exit_watch()
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
        let event = if paused { Event::Pause } else { Event::Resume };
        {
            let state = self.lock();
            container(&state, id)?
                .init
                .status()
                .next(event, &format!("task {id}"))?;
        }
        let pod = self.pod()?;
        let rpc = if paused {
            "PauseContainer"
        } else {
            "ResumeContainer"
        };
        Self::bounded(
            pod.as_ref(),
            rpc,
            self.deadlines().call,
            pod.agent().set_paused(id, paused),
        )
        .await?;
        // Re-checked: the container may have exited meanwhile.
        container_mut(&mut self.lock(), id)?.init.apply(event)?;
        if paused {
            self.events().publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(events::TaskPaused {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            );
        } else {
            self.events().publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(events::TaskResumed {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            );
        }
        Ok(())
    }

    /// Checks that the task exists; answers the live pod.
    fn pod_of(&self, id: &str) -> Result<std::sync::Arc<dyn crate::task::seam::PodVm>> {
        container(&self.lock(), id)?;
        self.pod()
    }

    pub async fn pids(&self, id: &str) -> Result<api::PidsResponse> {
        let pod = self.pod_of(id)?;
        let pids = Self::bounded(
            pod.as_ref(),
            "ListProcesses",
            self.deadlines().call,
            pod.agent().list_processes(id),
        )
        .await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    pub async fn stats(&self, id: &str) -> Result<agent_api::StatsContainerResponse> {
        let pod = self.pod_of(id)?;
        Self::bounded(
            pod.as_ref(),
            "StatsContainer",
            self.deadlines().call,
            pod.agent().stats_container(id),
        )
        .await
    }

    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let pod = self.pod_of(id)?;
        Self::bounded(
            pod.as_ref(),
            "UpdateContainer",
            self.deadlines().call,
            pod.agent().update_container(id, resources_json),
        )
        .await
    }

    pub async fn resize_pty(&self, id: &str, exec_id: &str, rows: u32, cols: u32) -> Result<()> {
        let pod = self.pod_of(id)?;
        Self::bounded(
            pod.as_ref(),
            "ResizeTty",
            self.deadlines().call,
            pod.agent().resize_tty(&process_id(id, exec_id), rows, cols),
        )
        .await
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let process = process_id(id, exec_id);
        if let Some(copiers) = self.lock().copiers.get_mut(&process) {
            copiers.close_stdin();
        }
        let pod = self.pod_of(id)?;
        Self::bounded(
            pod.as_ref(),
            "CloseStdin",
            self.deadlines().call,
            pod.agent().close_stdin(&process),
        )
        .await
    }

    pub fn init_pid(&self, id: &str) -> Option<u32> {
        self.lock().containers.get(id).map(|c| c.init.pid)
    }
}
