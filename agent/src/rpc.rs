//! The tonic adapter: each RPC forwards to [`Agent`], and errors become gRPC
//! statuses here and nowhere else.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use hull_proto::v1 as api;
use hull_proto::v1::agent_server::Agent as AgentApi;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::AgentError;
use crate::service::Agent;

#[derive(Debug, Clone)]
pub struct AgentRpc(pub Arc<Agent>);

type RpcResult<T> = Result<Response<T>, Status>;

fn answer<T>(result: crate::error::Result<T>) -> RpcResult<T> {
    result.map(Response::new).map_err(|err: AgentError| {
        tracing::debug!(%err, "request failed");
        Status::from(err)
    })
}

impl AgentRpc {
    /// The sandbox's policy may deny the RPC (see [`crate::policy`]), or,
    /// in an agent built for tests, say never to answer it.
    async fn allowed(&self, rpc: &'static str) -> Result<(), Status> {
        self.hang_if_told(rpc).await;
        self.0.allow(rpc).map_err(Status::from)
    }

    /// Plays a guest that stalls: never answers (tests only).
    async fn hang_if_told(&self, rpc: &'static str) {
        if self.0.hangs(rpc) {
            tracing::warn!(rpc, "test-hang: this call is never answered");
            std::future::pending::<()>().await;
        }
    }
}

#[tonic::async_trait]
impl AgentApi for AgentRpc {
    async fn health(&self, _: Request<api::HealthRequest>) -> RpcResult<api::HealthResponse> {
        Ok(Response::new(self.0.health()))
    }

    async fn guest_details(
        &self,
        _: Request<api::GuestDetailsRequest>,
    ) -> RpcResult<api::GuestDetailsResponse> {
        Ok(Response::new(self.0.guest_details()))
    }

    async fn create_sandbox(
        &self,
        request: Request<api::CreateSandboxRequest>,
    ) -> RpcResult<api::CreateSandboxResponse> {
        answer(self.0.create_sandbox(request.into_inner()).await)
    }

    async fn destroy_sandbox(
        &self,
        _: Request<api::DestroySandboxRequest>,
    ) -> RpcResult<api::DestroySandboxResponse> {
        self.hang_if_told("DestroySandbox").await;
        answer(self.0.destroy_sandbox().await)
    }

    async fn create_container(
        &self,
        request: Request<api::CreateContainerRequest>,
    ) -> RpcResult<api::CreateContainerResponse> {
        self.allowed("CreateContainer").await?;
        answer(self.0.create_container(request.into_inner()).await)
    }

    async fn start_container(
        &self,
        request: Request<api::StartContainerRequest>,
    ) -> RpcResult<api::StartContainerResponse> {
        self.allowed("StartContainer").await?;
        answer(self.0.start_container(request.into_inner()).await)
    }

    async fn remove_container(
        &self,
        request: Request<api::RemoveContainerRequest>,
    ) -> RpcResult<api::RemoveContainerResponse> {
        self.allowed("RemoveContainer").await?;
        answer(self.0.remove_container(request.into_inner()).await)
    }

    async fn pause_container(
        &self,
        request: Request<api::PauseContainerRequest>,
    ) -> RpcResult<api::PauseContainerResponse> {
        self.allowed("PauseContainer").await?;
        answer(self.0.pause_container(request.into_inner()).await)
    }

    async fn resume_container(
        &self,
        request: Request<api::ResumeContainerRequest>,
    ) -> RpcResult<api::ResumeContainerResponse> {
        self.allowed("ResumeContainer").await?;
        answer(self.0.resume_container(request.into_inner()).await)
    }

    async fn update_container(
        &self,
        request: Request<api::UpdateContainerRequest>,
    ) -> RpcResult<api::UpdateContainerResponse> {
        self.allowed("UpdateContainer").await?;
        answer(self.0.update_container(request.into_inner()).await)
    }

    async fn stats_container(
        &self,
        request: Request<api::StatsContainerRequest>,
    ) -> RpcResult<api::StatsContainerResponse> {
        self.allowed("StatsContainer").await?;
        answer(self.0.stats_container(request.into_inner()).await)
    }

    async fn exec_process(
        &self,
        request: Request<api::ExecProcessRequest>,
    ) -> RpcResult<api::ExecProcessResponse> {
        self.allowed("ExecProcess").await?;
        answer(self.0.exec_process(request.into_inner()).await)
    }

    async fn signal_process(
        &self,
        request: Request<api::SignalProcessRequest>,
    ) -> RpcResult<api::SignalProcessResponse> {
        self.allowed("SignalProcess").await?;
        answer(self.0.signal_process(request.into_inner()).await)
    }

    async fn wait_process(
        &self,
        request: Request<api::WaitProcessRequest>,
    ) -> RpcResult<api::WaitProcessResponse> {
        self.allowed("WaitProcess").await?;
        answer(self.0.wait_process(request.into_inner()).await)
    }

    async fn list_processes(
        &self,
        request: Request<api::ListProcessesRequest>,
    ) -> RpcResult<api::ListProcessesResponse> {
        self.allowed("ListProcesses").await?;
        answer(self.0.list_processes(request.into_inner()).await)
    }

    type ReadOutputStream = Pin<Box<dyn Stream<Item = Result<api::OutputChunk, Status>> + Send>>;

    async fn read_output(
        &self,
        request: Request<api::ReadOutputRequest>,
    ) -> RpcResult<Self::ReadOutputStream> {
        self.allowed("ReadOutput").await?;
        let output = self.0.read_output(request.into_inner());
        answer(output.map(|bytes| -> Self::ReadOutputStream {
            bytes
                .map(|chunk| {
                    chunk
                        .map(|data| api::OutputChunk { data })
                        .map_err(Status::from)
                })
                .boxed()
        }))
    }

    async fn write_stdin(
        &self,
        request: Request<Streaming<api::StdinChunk>>,
    ) -> RpcResult<api::WriteStdinResponse> {
        self.allowed("WriteStdin").await?;
        let chunks = request.into_inner().map(|chunk| {
            chunk.map_err(|status| AgentError::Runtime(format!("stdin stream: {status}")))
        });
        answer(self.0.write_stdin(chunks).await)
    }

    async fn close_stdin(
        &self,
        request: Request<api::CloseStdinRequest>,
    ) -> RpcResult<api::CloseStdinResponse> {
        self.allowed("CloseStdin").await?;
        answer(self.0.close_stdin(request.into_inner()).await)
    }

    async fn resize_tty(
        &self,
        request: Request<api::ResizeTtyRequest>,
    ) -> RpcResult<api::ResizeTtyResponse> {
        self.allowed("ResizeTty").await?;
        answer(self.0.resize_tty(request.into_inner()))
    }

    type OomEventsStream = Pin<Box<dyn Stream<Item = Result<api::OomEvent, Status>> + Send>>;

    async fn oom_events(
        &self,
        _: Request<api::OomEventsRequest>,
    ) -> RpcResult<Self::OomEventsStream> {
        self.allowed("OomEvents").await?;
        // A subscriber that falls behind loses the oldest events rather than
        // stalling the watchers; the stream says so in the log.
        let events = BroadcastStream::new(self.0.oom_events()).filter_map(|event| async move {
            match event {
                Ok(event) => Some(Ok(event)),
                Err(lagged) => {
                    tracing::warn!(%lagged, "OOM event subscriber fell behind");
                    None
                }
            }
        });
        Ok(Response::new(events.boxed()))
    }
}
