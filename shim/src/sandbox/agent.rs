//! The guest agent behind the task state machine's seam, over gRPC.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::BoxStream;
use hull_proto::v1 as api;

use crate::agent::Agent;
use crate::error::Result;
use crate::stdio::Copiers;
use crate::task::seam::GuestAgent;
use crate::task::{Exit, ProcessId, StdioPaths};

/// The agent behind the task state machine's seam: each call is one gRPC
/// call, with no deadline of its own (the state machine sets them).
#[derive(Debug, Clone)]
pub struct GrpcAgent(pub Agent);

#[async_trait::async_trait]
impl GuestAgent for GrpcAgent {
    async fn create_container(&self, request: api::CreateContainerRequest) -> Result<u32> {
        Ok(self
            .0
            .clone()
            .create_container(request)
            .await?
            .into_inner()
            .pid)
    }

    async fn start_container(&self, container: &str) -> Result<()> {
        self.0
            .clone()
            .start_container(api::StartContainerRequest {
                container_id: container.to_owned(),
            })
            .await?;
        Ok(())
    }

    async fn exec_process(&self, request: api::ExecProcessRequest) -> Result<u32> {
        Ok(self.0.clone().exec_process(request).await?.into_inner().pid)
    }

    async fn signal_process(&self, process: &ProcessId, signal: u32, all: bool) -> Result<()> {
        self.0
            .clone()
            .signal_process(api::SignalProcessRequest {
                process: Some(process.to_agent()),
                signal,
                all,
            })
            .await?;
        Ok(())
    }

    async fn remove_container(&self, container: &str) -> Result<()> {
        self.0
            .clone()
            .remove_container(api::RemoveContainerRequest {
                container_id: container.to_owned(),
                force: true,
            })
            .await?;
        Ok(())
    }

    async fn set_paused(&self, container: &str, paused: bool) -> Result<()> {
        let container_id = container.to_owned();
        if paused {
            self.0
                .clone()
                .pause_container(api::PauseContainerRequest { container_id })
                .await?;
        } else {
            self.0
                .clone()
                .resume_container(api::ResumeContainerRequest { container_id })
                .await?;
        }
        Ok(())
    }

    async fn list_processes(&self, container: &str) -> Result<Vec<u32>> {
        Ok(self
            .0
            .clone()
            .list_processes(api::ListProcessesRequest {
                container_id: container.to_owned(),
            })
            .await?
            .into_inner()
            .processes
            .into_iter()
            .map(|process| process.pid)
            .collect())
    }

    async fn close_stdin(&self, process: &ProcessId) -> Result<()> {
        self.0
            .clone()
            .close_stdin(api::CloseStdinRequest {
                process: Some(process.to_agent()),
            })
            .await?;
        Ok(())
    }

    async fn resize_tty(&self, process: &ProcessId, rows: u32, cols: u32) -> Result<()> {
        self.0
            .clone()
            .resize_tty(api::ResizeTtyRequest {
                process: Some(process.to_agent()),
                rows,
                cols,
            })
            .await?;
        Ok(())
    }

    async fn update_container(&self, container: &str, resources_json: Vec<u8>) -> Result<()> {
        self.0
            .clone()
            .update_container(api::UpdateContainerRequest {
                container_id: container.to_owned(),
                resources_json,
            })
            .await?;
        Ok(())
    }

    async fn stats_container(&self, container: &str) -> Result<api::StatsContainerResponse> {
        Ok(self
            .0
            .clone()
            .stats_container(api::StatsContainerRequest {
                container_id: container.to_owned(),
            })
            .await?
            .into_inner())
    }

    async fn attach_stdio(&self, process: &ProcessId, paths: &StdioPaths) -> Result<Copiers> {
        Copiers::attach(&self.0, process, paths).await
    }

    async fn destroy_sandbox(&self) -> Result<()> {
        self.0
            .clone()
            .destroy_sandbox(api::DestroySandboxRequest {})
            .await?;
        Ok(())
    }

    async fn wait_process(&self, process: &ProcessId) -> Result<Exit> {
        let response = self
            .0
            .clone()
            .wait_process(api::WaitProcessRequest {
                process: Some(process.to_agent()),
            })
            .await?
            .into_inner();
        Ok(Exit {
            status: response.exit_status as u32,
            at: SystemTime::UNIX_EPOCH
                + Duration::from_nanos(response.exited_at_unix_nanos.max(0) as u64),
        })
    }

    async fn oom_events(&self) -> Result<BoxStream<'static, String>> {
        let stream = self
            .0
            .clone()
            .oom_events(api::OomEventsRequest {})
            .await?
            .into_inner();
        // A stream error ends the watch, as the end of the stream does.
        Ok(stream
            .take_while(|event| std::future::ready(event.is_ok()))
            .filter_map(|event| std::future::ready(event.ok().map(|event| event.container_id)))
            .boxed())
    }
}
