//! The gRPC client of the guest agent, over hybrid vsock: every connection
//! is a fresh `CONNECT <port>` on the VM's Unix socket.

use std::path::PathBuf;

use hull_proto::v1::AGENT_VSOCK_PORT;
use hull_proto::v1::agent_client::AgentClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Result, ShimError};

pub type Agent = AgentClient<Channel>;

/// Connects to the agent behind the hybrid vsock socket `uds`.
pub async fn connect(uds: PathBuf) -> Result<Agent> {
    let channel = Endpoint::from_static("http://hull-agent.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let uds = uds.clone();
            async move {
                let stream = tokio::task::spawn_blocking(move || {
                    hull_hypervisor::vsock::connect(&uds, AGENT_VSOCK_PORT)
                })
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
                stream.set_nonblocking(true)?;
                tokio::net::UnixStream::from_std(stream).map(TokioIo::new)
            }
        }))
        .await
        .map_err(|err| ShimError::Io {
            context: "connecting to the guest agent".into(),
            source: std::io::Error::other(err),
        })?;
    Ok(AgentClient::new(channel))
}
