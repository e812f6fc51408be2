//! Start (of a container's init, or of an exec'd process) and Exec (which
//! only records the process until its Start).

use containerd_shim::protos::api;
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::topics;
use hull_proto::v1 as agent_api;

use super::{Tasks, check_id, container, container_mut, process_id};
use crate::error::{Result, ShimError};
use crate::task::{Event, Process, ProcessId, StdioPaths};

/// Releases the process's Start claim however Start ends.
struct Claim<'a> {
    tasks: &'a Tasks,
    id: ProcessId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.tasks.lock().starting.remove(&self.id);
    }
}

impl Tasks {
    pub async fn start(&self, request: api::StartRequest) -> Result<api::StartResponse> {
        let id = process_id(&request.id, &request.exec_id);
        let pod = self.pod()?;
        let (stdio, init_pid, exec_spec) = {
            let mut state = self.lock();
            let process = container(&state, &request.id)?.process(&request.exec_id)?;
            process.status().next(Event::Start, &id.to_string())?;
            let stdio = process.stdio.clone();
            let init_pid = process.pid;
            if !state.starting.insert(id.clone()) {
                return Err(ShimError::FailedPrecondition(format!(
                    "{id} is already starting"
                )));
            }
            let exec_spec = match &id.exec {
                Some(_) => match state.pending_execs.remove(&id) {
                    Some(spec) => Some(spec),
                    None => {
                        state.starting.remove(&id);
                        return Err(ShimError::FailedPrecondition(format!(
                            "{id} has no process spec"
                        )));
                    }
                },
                None => None,
            };
            (stdio, init_pid, exec_spec)
        };
        let _claim = Claim {
            tasks: self,
            id: id.clone(),
        };
        let agent = pod.agent();
        let deadline = self.deadlines().start;
        let (pid, copiers) = match (&id.exec, exec_spec) {
            (Some(exec), Some(spec)) => {
                let started = async {
                    let pid = agent
                        .exec_process(agent_api::ExecProcessRequest {
                            container_id: request.id.clone(),
                            exec_id: exec.clone(),
                            process_json: spec,
                            stdio: Some(stdio.to_agent()),
                        })
                        .await?;
                    let copiers = agent.attach_stdio(&id, &stdio).await?;
                    Ok::<_, ShimError>((pid, Some(copiers)))
                };
                Self::bounded(pod.as_ref(), "ExecProcess", deadline, started).await?
            }
            _ => {
                Self::bounded(
                    pod.as_ref(),
                    "StartContainer",
                    deadline,
                    agent.start_container(&request.id),
                )
                .await?;
                (init_pid, None)
            }
        };
        {
            let mut state = self.lock();
            let process = container_mut(&mut state, &request.id)?.process_mut(&request.exec_id)?;
            process.pid = pid;
            process.apply(Event::Start)?;
            if let Some(copiers) = copiers {
                state.copiers.insert(id.clone(), copiers);
            }
        }
        match &id.exec {
            Some(exec_id) => self.events().publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(events::TaskExecStarted {
                    container_id: request.id.clone(),
                    exec_id: exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            ),
            None => self.events().publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(events::TaskStart {
                    container_id: request.id.clone(),
                    pid,
                    ..Default::default()
                }),
            ),
        }
        // After the start event, so that containerd sees the exit after it.
        self.watch_exit(id, pid, pod);
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    pub async fn exec(&self, request: api::ExecProcessRequest) -> Result<()> {
        check_id("exec_id", &request.exec_id)?;
        let spec = request
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| ShimError::invalid("spec", "is missing"))?;
        let id = process_id(&request.id, &request.exec_id);
        let stdio = StdioPaths {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        };
        {
            let mut state = self.lock();
            container_mut(&mut state, &request.id)?.add_exec(Process::new(id.clone(), 0, stdio))?;
            state.pending_execs.insert(id, spec);
        }
        self.events().publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(events::TaskExecAdded {
                container_id: request.id,
                exec_id: request.exec_id,
                ..Default::default()
            }),
        );
        Ok(())
    }
}
