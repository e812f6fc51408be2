//! The shim binary's three roles (containerd-shim crate): `start` spawns
//! (or finds) the pod's shim, `delete` cleans up after a shim that died,
//! and the server serves the Task API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{ExitSignal, Shim, spawn};
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts};

use crate::events::{Events, timestamp};
use crate::pod_dir::PodDir;
use crate::service::TaskService;
use crate::tasks::{SANDBOX_ID_ANNOTATION, Tasks, pod_dir_record};

pub const RUNTIME_ID: &str = "io.containerd.hull.v2";

pub struct HullShim {
    namespace: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for HullShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HullShim")
            .field("namespace", &self.namespace)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

/// The shim config: the shim never reaps children it did not start itself
/// (the VM's processes are waited for by their owners).
pub fn shim_config() -> Config {
    Config {
        no_setup_logger: true,
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    }
}

#[async_trait]
impl Shim for HullShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, flags: &Flags, _config: &mut Config) -> Self {
        let bundle = if flags.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&flags.bundle)
        };
        Self {
            namespace: flags.namespace.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim per pod: containers of the same CRI sandbox share it.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = pod_of(&self.bundle).unwrap_or_else(|| opts.id.clone());
        spawn(opts, &grouping, Vec::new()).await
    }

    /// Runs after a shim died: if no shim serves the pod any more, its VM
    /// processes are killed and its mounts and directories removed.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        match std::fs::read_to_string(pod_dir_record(&self.bundle)) {
            Ok(dir) => {
                let dir = PathBuf::from(dir);
                if served_by_live_shim(&dir) {
                    tracing::info!(pod = %dir.display(), "another shim still serves the pod");
                } else if !dir.exists() {
                    // The delete of another task of the pod came first.
                    tracing::info!(pod = %dir.display(), "the pod is cleaned up already");
                } else {
                    let shim = std::fs::read_to_string(PodDir::at(&dir).shim_pid())
                        .map_or_else(|_| "?".to_owned(), |pid| pid.trim().to_owned());
                    // containerd logs what this command writes to stderr
                    // ("cleanup warnings", or with the error if it gives
                    // up on the command): say what died and what went,
                    // first thing.
                    crate::crash::clean_up_after_crash(&dir, |killed| {
                        let killed = if killed.is_empty() {
                            "nothing".to_owned()
                        } else {
                            killed.join(", ")
                        };
                        eprintln!(
                            "containerd-shim-hull-v2 (pid {shim}) of pod {} is gone; killed what it left running: {killed}",
                            dir.display()
                        );
                    });
                }
            }
            Err(err) => tracing::info!(bundle = %self.bundle.display(), %err, "no pod recorded"),
        }
        let _ = std::fs::remove_file(pod_dir_record(&self.bundle));
        Ok(DeleteResponse {
            // As runc's shim reports a task it lost: killed.
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(timestamp(std::time::SystemTime::now())).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService {
            tasks: Tasks::new(
                Arc::new(crate::sandbox::VmBooter),
                Events::new(publisher, &self.namespace),
                crate::sandbox::deadlines(),
                Arc::clone(&self.exit),
            ),
        }
    }
}

/// The `start` action, answered in the form every containerd since 1.5
/// reads: the plain socket address. (The containerd-shim crate answers with
/// the JSON that only containerd 1.7 and later understand.)
pub async fn start(args: &[std::ffi::OsString]) -> Result<(), Error> {
    let flags = containerd_shim::parse(args)?;
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir()
            .map_err(|err| Error::Other(format!("the bundle directory: {err}")))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let grouping = pod_of(&bundle).unwrap_or_else(|| flags.id.clone());
    let opts = StartOpts {
        id: flags.id,
        publish_binary: flags.publish_binary,
        address: flags.address,
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace,
        debug: flags.debug,
        ..StartOpts::default()
    };
    // A pod's later containers find its shim serving: reuse it, rather
    // than start a server that can only fail to bind the same socket.
    let address = opts.socket_address(&grouping);
    let address = if served(&address) {
        address
    } else {
        spawn(opts, &grouping, Vec::new()).await?
    };
    let _ = std::fs::write(bundle.join("address"), &address);
    use std::io::Write;
    let mut stdout = std::io::stdout();
    stdout
        .write_all(address.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::Other(format!("writing the shim address: {err}")))
}

/// The CRI sandbox a bundle's container belongs to.
fn pod_of(bundle: &Path) -> Option<String> {
    let spec = crate::spec::read_bundle(bundle).ok()?;
    crate::spec::annotations(&spec).remove(SANDBOX_ID_ANNOTATION)
}

/// Whether a shim accepts connections at `address` (`unix://PATH`).
fn served(address: &str) -> bool {
    address
        .strip_prefix("unix://")
        .is_some_and(|path| std::os::unix::net::UnixStream::connect(path).is_ok())
}

fn served_by_live_shim(pod_dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(PodDir::at(pod_dir).shim_pid())
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    else {
        return false;
    };
    // A killed shim can linger as a zombie until its parent reaps it; it
    // serves nothing. /proc/PID/comm is cut to 15 bytes.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'));
    !zombie
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| "containerd-shim-hull-v2".starts_with(comm.trim()))
        && pid != std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_served_only_while_something_listens_on_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("shim.sock");
        let address = format!("unix://{}", path.display());
        assert!(!served(&address), "no socket yet");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(served(&address));
        drop(listener);
        // A shim that died leaves its socket file behind.
        assert!(path.exists());
        assert!(!served(&address));
        assert!(!served(path.to_str().expect("utf-8")), "not an address");
    }
}
