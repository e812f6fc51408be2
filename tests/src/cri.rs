//! A small CRI client (`k8s_cri::v1`) over a Unix socket, with the calls a
//! kubelet makes to run a pod: RunPodSandbox, CreateContainer and
//! StartContainer, ExecSync, ContainerStatus, StopPodSandbox and
//! RemovePodSandbox; and a reader for the CRI container log format.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

/// The bound on each CRI call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A pod to run: [`PodSpec::new`] gives a node-network pod for runc.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The runtime handler: a `runtimes` entry of containerd's CRI config.
    pub runtime_handler: String,
    /// In the node's network namespace; otherwise CNI gives the pod one.
    pub host_network: bool,
    /// In the node's PID namespace (for a hull: the guest's, where the agent
    /// is PID 1); otherwise each container has its own.
    pub host_pid: bool,
    /// Unless `host_pid`: one PID namespace for the whole pod (CRI's POD
    /// mode) rather than one per container.
    pub pod_pid: bool,
    /// In the node's IPC namespace; otherwise the pod has one of its own.
    pub host_ipc: bool,
    /// The pod's sysctls (`securityContext.sysctls`).
    pub sysctls: Vec<(String, String)>,
    /// Where container logs go; [`ContainerSpec::log_path`] is relative to it.
    pub log_directory: PathBuf,
    /// The pod's cgroup parent, as the kubelet passes its pod cgroup
    /// (cgroupfs form: `/kubepods/burstable/pod<uid>`); empty for
    /// containerd's default.
    pub cgroup_parent: String,
    /// The pod's annotations (the runtime's `pod_annotations` lets them
    /// through to the sandbox spec).
    pub annotations: Vec<(String, String)>,
}

impl PodSpec {
    /// A pod named `name` in namespace `default`, with a unique uid, on the
    /// node network, run by `runtime_handler`, logging under `log_directory`.
    pub fn new(name: &str, runtime_handler: &str, log_directory: &Path) -> Self {
        Self {
            name: name.into(),
            namespace: "default".into(),
            uid: crate::unique_id("uid"),
            runtime_handler: runtime_handler.into(),
            host_network: true,
            host_pid: false,
            pod_pid: false,
            host_ipc: false,
            sysctls: Vec::new(),
            log_directory: log_directory.into(),
            cgroup_parent: String::new(),
            annotations: Vec::new(),
        }
    }

    fn namespace_options(&self) -> cri::NamespaceOption {
        let network = if self.host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        };
        cri::NamespaceOption {
            network: network as i32,
            pid: if self.host_pid {
                cri::NamespaceMode::Node
            } else if self.pod_pid {
                cri::NamespaceMode::Pod
            } else {
                cri::NamespaceMode::Container
            } as i32,
            ipc: if self.host_ipc {
                cri::NamespaceMode::Node
            } else {
                cri::NamespaceMode::Pod
            } as i32,
            ..Default::default()
        }
    }

    /// The sandbox config CRI gets, which CreateContainer needs again.
    pub fn config(&self) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            // A node-network pod shares the node's UTS namespace too, and
            // runc refuses to set a hostname there.
            hostname: if self.host_network {
                String::new()
            } else {
                self.name.clone()
            },
            log_directory: self.log_directory.display().to_string(),
            annotations: self.annotations.iter().cloned().collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                sysctls: self.sysctls.iter().cloned().collect(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(self.namespace_options()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A running pod sandbox.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub spec: PodSpec,
}

impl Pod {
    /// Where the container with log path `log_path` writes its log.
    pub fn log_file(&self, log_path: &str) -> PathBuf {
        self.spec.log_directory.join(log_path)
    }
}

/// A bind mount from the host into a container.
#[derive(Debug, Clone, Default)]
pub struct BindMount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub readonly: bool,
    /// CRI's mount propagation (private unless set).
    pub propagation: cri::MountPropagation,
}

/// A container to create in a pod.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// The entrypoint; empty keeps the image's.
    pub command: Vec<String>,
    /// The arguments; empty keeps the image's Cmd when `command` is empty.
    pub args: Vec<String>,
    /// Relative to the pod's log directory; empty means `<name>.log`.
    pub log_path: String,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
    /// Capabilities added to the default set (`SYS_PTRACE`).
    pub add_capabilities: Vec<String>,
    /// The seccomp profile; `None` leaves it to containerd (unconfined).
    pub seccomp: Option<cri::SecurityProfile>,
    /// The restart count: the kubelet creates a restarted container again,
    /// with the next attempt.
    pub attempt: u32,
    /// In the PID namespace of this container of the pod (CRI's TARGET
    /// mode, as ephemeral debug containers use), rather than the pod's mode.
    pub pid_target: Option<String>,
    /// Keeps stdin open, for Attach (`kubectl run -i`).
    pub stdin: bool,
}

impl ContainerSpec {
    /// A container named `name` running `command` in `image`.
    pub fn new(name: &str, image: &str, command: &[&str]) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The log path relative to the pod's log directory.
    pub fn log_path(&self) -> String {
        if self.log_path.is_empty() {
            format!("{}.log", self.name)
        } else {
            self.log_path.clone()
        }
    }
}

/// What ExecSync returned.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// A CRI client: the runtime and image services on one connection.
#[derive(Debug, Clone)]
pub struct CriClient {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the CRI server at `socket`. Every call is bounded by
    /// [`CALL_TIMEOUT`], so a hung runtime fails a test instead of hanging
    /// it.
    pub async fn connect(socket: &Path) -> Self {
        let socket = socket.to_owned();
        // The URI is required and ignored: the connector dials the socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { UnixStream::connect(socket).await.map(TokioIo::new) }
            }))
            .await
            .expect("connect to the CRI socket");
        Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// The runtime's name and versions (a cheap liveness check).
    pub async fn version(&mut self) -> cri::VersionResponse {
        self.runtime
            .version(cri::VersionRequest::default())
            .await
            .expect("CRI Version")
            .into_inner()
    }

    /// Whether CRI knows `image` (which must have been imported: nothing is
    /// pulled).
    pub async fn has_image(&mut self, image: &str) -> bool {
        self.images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("CRI ImageStatus")
            .into_inner()
            .image
            .is_some()
    }

    /// Waits until CRI knows `image`: CRI learns of images that `ctr`
    /// imported from containerd's events, a moment later. Panics after
    /// `timeout`.
    pub async fn wait_for_image(&mut self, image: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.has_image(image).await {
            assert!(
                Instant::now() < deadline,
                "CRI does not know {image} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 10 s) until CRI knows the test images
    /// ([`crate::image::BUSYBOX_IMAGE`], and the sandbox image
    /// [`crate::image::PAUSE_IMAGE`]) that
    /// [`crate::containerd::Containerd::import_cri_images`] imported.
    pub async fn wait_for_test_images(&mut self) {
        for image in [crate::image::BUSYBOX_IMAGE, crate::image::PAUSE_IMAGE] {
            self.wait_for_image(image, Duration::from_secs(10)).await;
        }
    }

    /// RunPodSandbox; creates the log directory first.
    pub async fn run_pod(&mut self, spec: &PodSpec) -> Result<Pod, tonic::Status> {
        std::fs::create_dir_all(&spec.log_directory).expect("pod log directory");
        let response = self
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(spec.config()),
                runtime_handler: spec.runtime_handler.clone(),
            })
            .await?
            .into_inner();
        Ok(Pod {
            id: response.pod_sandbox_id,
            spec: spec.clone(),
        })
    }

    /// The pod's IP as CNI gave it (PodSandboxStatus); empty on the node
    /// network.
    pub async fn pod_ip(&mut self, id: &str) -> Result<String, tonic::Status> {
        let status = self
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status;
        Ok(status
            .and_then(|status| status.network)
            .map(|network| network.ip)
            .unwrap_or_default())
    }

    /// CreateContainer in `pod`; returns the container id.
    pub async fn create_container(
        &mut self,
        pod: &Pod,
        spec: &ContainerSpec,
    ) -> Result<String, tonic::Status> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: spec.attempt,
            }),
            image: Some(cri::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .env
                .iter()
                .map(|(key, value)| cri::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|mount| cri::Mount {
                    container_path: mount.container_path.clone(),
                    host_path: mount.host_path.display().to_string(),
                    readonly: mount.readonly,
                    propagation: mount.propagation as i32,
                    ..Default::default()
                })
                .collect(),
            log_path: spec.log_path(),
            stdin: spec.stdin,
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(match &spec.pid_target {
                        Some(target) => cri::NamespaceOption {
                            pid: cri::NamespaceMode::Target as i32,
                            target_id: target.clone(),
                            ..pod.spec.namespace_options()
                        },
                        None => pod.spec.namespace_options(),
                    }),
                    capabilities: Some(cri::Capability {
                        add_capabilities: spec.add_capabilities.clone(),
                        ..Default::default()
                    }),
                    seccomp: spec.seccomp.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let response = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.spec.config()),
            })
            .await?
            .into_inner();
        Ok(response.container_id)
    }

    /// StartContainer.
    pub async fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// CreateContainer then StartContainer; returns the container id.
    pub async fn run_container(
        &mut self,
        pod: &Pod,
        spec: &ContainerSpec,
    ) -> Result<String, tonic::Status> {
        let id = self.create_container(pod, spec).await?;
        self.start_container(&id).await?;
        Ok(id)
    }

    /// ExecSync `cmd` in container `id`, bounded by `timeout` (whole
    /// seconds; zero means none).
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, tonic::Status> {
        let response = self
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout.as_secs() as i64,
            })
            .await?
            .into_inner();
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&response.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&response.stderr).into_owned(),
            exit_code: response.exit_code,
        })
    }

    /// ExecSync `script` under `sh -c` in container `id`, within a minute;
    /// panics unless it exits 0. Answers its stdout.
    pub async fn sh(&mut self, id: &str, script: &str) -> String {
        let output = self
            .exec_sync(id, &["sh", "-c", script], Duration::from_secs(60))
            .await
            .unwrap_or_else(|err| panic!("ExecSync {script:?}: {err}"));
        assert_eq!(output.exit_code, 0, "{script}: {output:?}");
        output.stdout
    }

    /// Attach to container `id`'s stdin, stdout and stderr (no TTY):
    /// answers the streaming URL (see [`crate::streaming`]).
    pub async fn attach(&mut self, id: &str) -> Result<String, tonic::Status> {
        Ok(self
            .runtime
            .attach(cri::AttachRequest {
                container_id: id.into(),
                stdin: true,
                tty: false,
                stdout: true,
                stderr: true,
            })
            .await?
            .into_inner()
            .url)
    }

    /// UpdateContainerResources of container `id`: its memory limit.
    pub async fn update_memory_limit(&mut self, id: &str, bytes: i64) -> Result<(), tonic::Status> {
        self.runtime
            .update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: bytes,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// ReopenContainerLog of container `id`.
    pub async fn reopen_container_log(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// ContainerStatus of container `id`.
    pub async fn container_status(
        &mut self,
        id: &str,
    ) -> Result<cri::ContainerStatus, tonic::Status> {
        let response = self
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner();
        response
            .status
            .ok_or_else(|| tonic::Status::not_found(format!("no status for container {id}")))
    }

    /// Polls ContainerStatus until container `id` has exited; returns its
    /// exit code, or the last status seen when `timeout` passes first.
    pub async fn wait_exited(
        &mut self,
        id: &str,
        timeout: Duration,
    ) -> Result<i32, Box<cri::ContainerStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id).await.expect("ContainerStatus");
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return Ok(status.exit_code);
            }
            if Instant::now() >= deadline {
                return Err(Box::new(status));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// StopContainer with a grace period of `timeout` (whole seconds).
    pub async fn stop_container(
        &mut self,
        id: &str,
        timeout: Duration,
    ) -> Result<(), tonic::Status> {
        self.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout: timeout.as_secs() as i64,
            })
            .await?;
        Ok(())
    }

    /// StopPodSandbox: stops its containers and the sandbox.
    pub async fn stop_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// RemovePodSandbox: removes its containers and the sandbox.
    pub async fn remove_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// [`Self::stop_pod`], then [`Self::remove_pod`]; both must succeed.
    /// A failure shows `containerd`'s log: what its event handlers did with
    /// the pod's tasks is only there.
    pub async fn stop_and_remove_pod(
        &mut self,
        id: &str,
        containerd: &crate::containerd::Containerd,
    ) {
        if let Err(err) = self.stop_pod(id).await {
            panic!(
                "StopPodSandbox: {err:?}\ncontainerd log:\n{}",
                containerd.log_tail(120)
            );
        }
        // Once, without a retry.
        self.remove_pod_within(id, Duration::ZERO, containerd).await;
    }

    /// RemovePodSandbox, retried for up to `patience` as the kubelet's pod
    /// garbage collector retries it: containerd gives its handling of a
    /// container's exit 10 seconds, and when that runs out (a busy host and
    /// several exits at once: a whole VM gone) it retries it later, with
    /// backoff. Until then the container is still "running" to CRI and
    /// cannot be removed. Panics with `containerd`'s log after `patience`.
    pub async fn remove_pod_within(
        &mut self,
        id: &str,
        patience: Duration,
        containerd: &crate::containerd::Containerd,
    ) {
        let deadline = Instant::now() + patience;
        loop {
            let err = match self.remove_pod(id).await {
                Ok(()) => return,
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                panic!(
                    "RemovePodSandbox for {patience:?}: {err:?}\ncontainerd log:\n{}",
                    containerd.log_tail(120)
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The pod sandboxes CRI lists.
    pub async fn list_pods(&mut self) -> Vec<cri::PodSandbox> {
        self.runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .expect("CRI ListPodSandbox")
            .into_inner()
            .items
    }

    /// The containers CRI lists.
    pub async fn list_containers(&mut self) -> Vec<cri::Container> {
        self.runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
            .expect("CRI ListContainers")
            .into_inner()
            .containers
    }
}

/// One line of a CRI container log: `TIMESTAMP STREAM TAG CONTENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// RFC 3339 with nanoseconds, as the runtime wrote it.
    pub timestamp: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `P` when the line continues in the next entry, else the whole line.
    pub partial: bool,
    pub content: String,
}

/// Parses a CRI container log; a missing file reads as empty.
pub fn read_log(path: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(parse_log_line).collect()
}

fn parse_log_line(line: &str) -> Option<LogLine> {
    let mut fields = line.splitn(4, ' ');
    let timestamp = fields.next()?.to_owned();
    let stream = fields.next()?.to_owned();
    let tag = fields.next()?;
    let content = fields.next().unwrap_or("").to_owned();
    Some(LogLine {
        timestamp,
        stream,
        partial: tag.split(':').any(|flag| flag == "P"),
        content,
    })
}

/// The text a container wrote to `stream` (`stdout` or `stderr`), with
/// partial lines joined and a newline after each full one.
pub fn log_text(path: &Path, stream: &str) -> String {
    let mut text = String::new();
    for line in read_log(path).into_iter().filter(|l| l.stream == stream) {
        text.push_str(&line.content);
        if !line.partial {
            text.push('\n');
        }
    }
    text
}

/// Polls `path` until `stream` holds `needle`, or `timeout` passes; returns
/// the text either way.
pub async fn wait_for_log(path: &Path, stream: &str, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = log_text(path, stream);
        if text.contains(needle) || Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_partial_lines() {
        let line = parse_log_line("2024-01-01T00:00:00.1Z stdout P hel").unwrap();
        assert!(line.partial);
        assert_eq!(line.content, "hel");
        let line = parse_log_line("2024-01-01T00:00:00.2Z stderr F lo world").unwrap();
        assert!(!line.partial);
        assert_eq!(line.stream, "stderr");
        assert_eq!(line.content, "lo world");
        let empty = parse_log_line("2024-01-01T00:00:00.3Z stdout F").unwrap();
        assert_eq!(empty.content, "");
    }
}
