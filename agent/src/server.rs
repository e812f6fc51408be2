//! Where the agent listens: vsock in a guest, a Unix socket on a host.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use hull_proto::v1::agent_server::AgentServer;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener};

use crate::rpc::AgentRpc;
use crate::service::Agent;

/// Requests larger than this are refused before they are decoded.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// After a shutdown request, how long clients get to close their connections
/// (and so receive the last answers) before the server stops regardless.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Vsock(u32),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listen address {0:?}: use vsock:PORT or unix:PATH")]
    BadAddress(String),
    #[error("binding {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl FromStr for Listen {
    type Err = ServeError;

    fn from_str(address: &str) -> Result<Self, Self::Err> {
        let bad = || ServeError::BadAddress(address.to_owned());
        match address.split_once(':') {
            Some(("vsock", port)) => port.parse().map(Self::Vsock).map_err(|_| bad()),
            Some(("unix", path)) if path.starts_with('/') => Ok(Self::Unix(path.into())),
            _ => Err(bad()),
        }
    }
}

/// Serves until the agent asks to shut down.
pub async fn serve(agent: Arc<Agent>, listen: Listen) -> Result<(), ServeError> {
    let mut shutdown = agent.shutdown_requested();
    let mut deadline = agent.shutdown_requested();
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let grace_over = async move {
        let _ = deadline.wait_for(|stop| *stop).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let socket_file = match &listen {
        Listen::Unix(path) => Some(path.clone()),
        Listen::Vsock(_) => None,
    };
    let served = tokio::select! {
        served = serve_until(agent, listen, stop) => served,
        () = grace_over => {
            tracing::info!("clients still connected after {SHUTDOWN_GRACE:?}; stopping");
            Ok(())
        }
    };
    if let Some(path) = socket_file {
        let _ = std::fs::remove_file(path);
    }
    served
}

async fn serve_until(
    agent: Arc<Agent>,
    listen: Listen,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let service = AgentServer::new(AgentRpc(agent))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder().add_service(service);
    match listen {
        Listen::Vsock(port) => {
            let listener =
                VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port)).map_err(|source| {
                    ServeError::Bind {
                        address: format!("vsock:{port}"),
                        source,
                    }
                })?;
            tracing::info!(port, "serving on vsock");
            tokio::spawn(tell_the_host_we_are_up());
            router
                .serve_with_incoming_shutdown(from_the_host(listener), stop)
                .await?;
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let listener =
                tokio::net::UnixListener::bind(&path).map_err(|source| ServeError::Bind {
                    address: format!("unix:{}", path.display()),
                    source,
                })?;
            tracing::info!(path = %path.display(), "serving on a Unix socket");
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
                .await?;
        }
    }
    Ok(())
}

/// Dials the host's ready port once the listener is bound: the host
/// connects to the agent only after this call (hull_hypervisor's
/// `Vm::wait_for_agent` says why). A host that does not wait for it refuses
/// the call, which is harmless.
async fn tell_the_host_we_are_up() {
    let port = hull_proto::v1::AGENT_READY_VSOCK_PORT;
    let host = VsockAddr::new(tokio_vsock::VMADDR_CID_HOST, port);
    match tokio_vsock::VsockStream::connect(host).await {
        Ok(_) => tracing::info!(port, "told the host the agent is up"),
        Err(err) => tracing::warn!(port, %err, "could not tell the host the agent is up"),
    }
}

/// Only the host may talk to the agent. A container in the guest can open
/// a vsock socket too and reach this port through the guest's own CID or
/// the local one (the escape tests did), which would give it the whole API:
/// exec in any container of the pod, create a privileged one, end the
/// sandbox. The host's connections come from CID 2 (VMADDR_CID_HOST) with
/// both VMMs; every other peer is dropped as it is accepted.
fn from_the_host(
    listener: VsockListener,
) -> impl futures::Stream<Item = std::io::Result<tokio_vsock::VsockStream>> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) if is_the_host(peer.cid()) => {
                    return Some((Ok(stream), listener));
                }
                Ok((_, peer)) => {
                    tracing::warn!(
                        cid = peer.cid(),
                        port = peer.port(),
                        "refused a vsock connection that is not from the host"
                    );
                }
                Err(err) => return Some((Err(err), listener)),
            }
        }
    })
}

fn is_the_host(cid: u32) -> bool {
    cid == tokio_vsock::VMADDR_CID_HOST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hosts_cid_may_connect() {
        assert!(is_the_host(2));
        // Local (loopback), the guest's own CID as both VMMs give it, any.
        for cid in [1, 3, 42, u32::MAX] {
            assert!(!is_the_host(cid), "{cid}");
        }
    }

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            "vsock:1024".parse::<Listen>().ok(),
            Some(Listen::Vsock(1024))
        );
        assert_eq!(
            "unix:/run/a.sock".parse::<Listen>().ok(),
            Some(Listen::Unix("/run/a.sock".into()))
        );
        for bad in ["vsock:x", "unix:relative", "tcp:1", "1024"] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
    }
}
