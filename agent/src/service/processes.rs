//! ExecProcess, SignalProcess, WaitProcess and ListProcesses.

use std::time::UNIX_EPOCH;

use hull_proto::v1 as api;

use super::{Agent, stdio_request};
use crate::cgroup;
use crate::error::{AgentError, Result};
use crate::ids;
use crate::runtime::Operation;
use crate::spec;
use crate::state::{Process, Status};

/// Everything ExecProcess checks before it looks for the container: the
/// ids and the process. Public for the fuzz targets.
pub fn validate_exec_process(
    request: &api::ExecProcessRequest,
) -> Result<oci_spec::runtime::Process> {
    ids::validate("exec_id", &request.exec_id)?;
    ids::validate("container_id", &request.container_id)?;
    let terminal = stdio_request(request.stdio.as_ref()).terminal;
    spec::exec_process(&request.process_json, terminal)
}

impl Agent {
    pub async fn exec_process(
        &self,
        request: api::ExecProcessRequest,
    ) -> Result<api::ExecProcessResponse> {
        let process = validate_exec_process(&request)?;
        let container = self.container(&request.container_id)?;
        let stdio = stdio_request(request.stdio.as_ref());

        let _operations = container.operations.lock().await;
        container.require("exec into", &[Status::Running])?;
        if container.has_exec(&request.exec_id) {
            return Err(AgentError::AlreadyExists {
                what: format!("exec {:?} in container {:?}", request.exec_id, container.id),
            });
        }
        let process_json = container
            .bundle
            .join(format!("exec-{}.json", request.exec_id));
        let json = serde_json::to_vec(&process)
            .map_err(|err| AgentError::Runtime(format!("encoding the process: {err}")))?;
        std::fs::write(&process_json, json)
            .map_err(|err| AgentError::io(format!("writing {}", process_json.display()), err))?;
        let spawned = self
            .spawn_process(&container.id, stdio, |stdio| Operation::Exec {
                process_json: process_json.clone(),
                stdio,
            })
            .await;
        let _ = std::fs::remove_file(&process_json);
        let (pid, io) = spawned?;
        let name = format!("{}/{}", container.id, request.exec_id);
        container.add_exec(
            request.exec_id,
            Process::new(name, pid, io, self.reaper.watch(pid)),
        );
        Ok(api::ExecProcessResponse { pid: pid as u32 })
    }

    pub async fn signal_process(
        &self,
        request: api::SignalProcessRequest,
    ) -> Result<api::SignalProcessResponse> {
        let (container, process) = self.process(request.process.as_ref())?;
        let signal = i32::try_from(request.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| {
                AgentError::invalid("signal", format!("{} is not a signal", request.signal))
            })?;
        if process.exited().is_some() {
            return Err(AgentError::Exited(process.name.clone()));
        }
        if request.all {
            let _operations = container.operations.lock().await;
            self.runtime
                .run(&container.id, Operation::Kill { signal, all: true }, None)
                .await?;
        } else {
            process.signal(signal)?;
        }
        Ok(api::SignalProcessResponse {})
    }

    pub async fn wait_process(
        &self,
        request: api::WaitProcessRequest,
    ) -> Result<api::WaitProcessResponse> {
        let (container, process) = self.process(request.process.as_ref())?;
        let finished = process.wait().await;
        let oom_killed = finished.exit.status == 128 + libc::SIGKILL
            && cgroup::oom_kills(&container.cgroup).is_some_and(|kills| kills > 0);
        let exited_at = finished
            .exit
            .at
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(api::WaitProcessResponse {
            exit_status: finished.exit.status,
            exited_at_unix_nanos: exited_at,
            stdout_bytes: finished.stdout_bytes,
            stderr_bytes: finished.stderr_bytes,
            oom_killed,
        })
    }

    pub async fn list_processes(
        &self,
        request: api::ListProcessesRequest,
    ) -> Result<api::ListProcessesResponse> {
        let container = self.container(&request.container_id)?;
        let dir = container.cgroup.clone();
        let pids = tokio::task::spawn_blocking(move || cgroup::pids(&dir))
            .await
            .map_err(|err| AgentError::Runtime(format!("listing processes: {err}")))?
            .map_err(|err| {
                AgentError::io(format!("processes of container {:?}", container.id), err)
            })?;
        let processes = pids
            .into_iter()
            .map(|pid| api::ProcessInfo {
                pid,
                command: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|comm| comm.trim_end().to_owned())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(api::ListProcessesResponse { processes })
    }
}
