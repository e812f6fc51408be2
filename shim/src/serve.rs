//! The shim's server: the Task API on the socket containerd chose.
//!
//! Served under both `containerd.task.v2.Task` (containerd 1.6 and 1.7)
//! and `containerd.task.v3.Task` (containerd 2.x): the messages are the same
//! on the wire, only the service name changed. The containerd-shim crate's
//! own server registers v3 only, so the shim runs this one.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use containerd_shim::asynchronous::Shim;
use containerd_shim::protos::shim_async::create_task;
use containerd_shim::protos::ttrpc::r#async::Server;
use containerd_shim::protos::ttrpc::r#async::transport::Listener;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Error, Flags};
use tokio::signal::unix::{SignalKind, signal};

use crate::shim::{HullShim, RUNTIME_ID, shim_config};

const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";

fn io_error(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |err| Error::Other(format!("{context}: {err}"))
}

pub async fn serve(flags: Flags) -> Result<(), Error> {
    if flags.socket.is_empty() {
        return Err(Error::InvalidArgument("-socket is required".into()));
    }
    let mut config = shim_config();
    let mut shim = HullShim::new(RUNTIME_ID, &flags, &mut config).await;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| Error::InvalidArgument("TTRPC_ADDRESS is not set".into()))?;
    let publisher = RemotePublisher::new(&ttrpc_address).await?;
    let service = Arc::new(shim.create_task_service(publisher).await);

    let mut services = create_task(Arc::clone(&service) as _);
    let v3 = create_task(service as _)
        .remove(TASK_V3)
        .ok_or_else(|| Error::Other("the task service is missing".into()))?;
    services.insert(TASK_V2.to_owned(), v3);

    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket)
        .to_owned();
    if let Some(parent) = Path::new(&path).parent() {
        std::fs::create_dir_all(parent).map_err(io_error("creating the socket directory"))?;
    }
    let listener = UnixListener::bind(&path).map_err(io_error("binding the shim socket"))?;
    let listener = Listener::try_from(listener).map_err(io_error("the shim socket"))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server.start().await?;
    // containerd's `start` reads the server's stdout until it closes: that
    // is the signal that the socket is ready.
    nix::unistd::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO)
        .map_err(|err| Error::Other(format!("closing stdout: {err}")))?;
    tracing::info!(socket = %path, "serving");

    let mut terminate = signal(SignalKind::terminate()).map_err(io_error("SIGTERM handler"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_error("SIGINT handler"))?;
    tokio::select! {
        () = shim.wait() => {}
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        _ = interrupt.recv() => tracing::info!("SIGINT"),
    }
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}
