//! A real `hull-agent` on the host, in its own mount namespace, serving on a
//! Unix socket: the agent's test mode.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hull_proto::v1 as api;
use hull_proto::v1::agent_client::AgentClient;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Uri};

/// Starts the agent in a private mount namespace, with a cgroup2 hierarchy at
/// /sys/fs/cgroup (a hybrid host's unified one, bind-mounted there).
const LAUNCH: &str = r#"
set -e
if [ "$(stat -f -c %T /sys/fs/cgroup)" != cgroup2fs ]; then
  if [ -d /sys/fs/cgroup/unified ]; then
    mount --bind /sys/fs/cgroup/unified /sys/fs/cgroup
  else
    echo "no cgroup2 hierarchy on this host" >&2; exit 1
  fi
fi
exec "$@"
"#;

/// No process in these suites runs longer than this.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct TestAgent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub client: AgentClient<Channel>,
}

/// Everything one process produced.
#[derive(Debug, Clone)]
pub struct Finished {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub wait: api::WaitProcessResponse,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub fn process_ref(container_id: &str, exec_id: &str) -> Option<api::ProcessRef> {
    Some(api::ProcessRef {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
    })
}

pub fn pipes(stdin: bool) -> Option<api::Stdio> {
    Some(api::Stdio {
        stdin,
        stdout: true,
        stderr: true,
        terminal: false,
    })
}

impl TestAgent {
    /// Starts the workspace's debug build of the agent.
    pub async fn start() -> Self {
        Self::start_binary(&crate::workspace_binary("hull-agent")).await
    }

    /// Starts the given agent executable.
    pub async fn start_binary(agent: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hull-agent-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let state = dir.path().join("state");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("agent log");
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                LAUNCH,
                "launch",
            ])
            .arg(agent)
            .arg("serve")
            .arg(format!("--listen=unix:{}", socket.display()))
            .arg(format!("--state-dir={}", state.display()))
            .env("HULL_AGENT_LOG", "debug")
            .stderr(log)
            .spawn()
            .expect("start hull-agent");
        let client = connect(&socket).await;
        Self { child, dir, client }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A fresh busybox root filesystem for one container.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        crate::rootfs::busybox(&self.dir.path().join("rootfs").join(name))
    }

    pub async fn create(
        &mut self,
        container_id: &str,
        spec: &Value,
        rootfs: &Path,
        stdio: Option<api::Stdio>,
    ) -> Result<u32, tonic::Status> {
        let response = self
            .client
            .create_container(api::CreateContainerRequest {
                container_id: container_id.to_owned(),
                oci_spec_json: serde_json::to_vec(spec).expect("spec json"),
                rootfs: rootfs.display().to_string(),
                stdio,
            })
            .await?;
        Ok(response.into_inner().pid)
    }

    pub async fn start_container(&mut self, container_id: &str) -> Result<(), tonic::Status> {
        self.client
            .start_container(api::StartContainerRequest {
                container_id: container_id.to_owned(),
            })
            .await
            .map(|_| ())
    }

    /// Reads one output stream to its end, in the background.
    pub async fn read_output(
        &mut self,
        container_id: &str,
        exec_id: &str,
        stream: api::OutputStream,
    ) -> JoinHandle<Vec<u8>> {
        let mut chunks = self
            .client
            .read_output(api::ReadOutputRequest {
                process: process_ref(container_id, exec_id),
                stream: stream as i32,
            })
            .await
            .expect("attach output")
            .into_inner();
        tokio::spawn(async move {
            let mut bytes = Vec::new();
            while let Some(chunk) = chunks.next().await {
                bytes.extend_from_slice(&chunk.expect("output chunk").data);
            }
            bytes
        })
    }

    /// Waits for a process; a minute without an answer fails the test with
    /// the agent's log.
    pub async fn wait(&mut self, container_id: &str, exec_id: &str) -> api::WaitProcessResponse {
        let request = api::WaitProcessRequest {
            process: process_ref(container_id, exec_id),
        };
        match tokio::time::timeout(WAIT_LIMIT, self.client.wait_process(request)).await {
            Ok(answer) => answer.expect("wait").into_inner(),
            Err(_) => panic!(
                "{container_id}/{exec_id} did not finish in {WAIT_LIMIT:?}; agent log:\n{}",
                self.log()
            ),
        }
    }

    pub async fn remove(&mut self, container_id: &str, force: bool) -> Result<(), tonic::Status> {
        self.client
            .remove_container(api::RemoveContainerRequest {
                container_id: container_id.to_owned(),
                force,
            })
            .await
            .map(|_| ())
    }

    /// Creates and starts a container with stdout and stderr attached, and
    /// collects everything up to its exit. The container is left to remove.
    pub async fn run_container(&mut self, container_id: &str, spec: &Value) -> Finished {
        let rootfs = self.rootfs(container_id);
        self.create(container_id, spec, &rootfs, pipes(false))
            .await
            .expect("create");
        let stdout = self
            .read_output(container_id, "", api::OutputStream::Stdout)
            .await;
        let stderr = self
            .read_output(container_id, "", api::OutputStream::Stderr)
            .await;
        self.start_container(container_id).await.expect("start");
        let wait = self.wait(container_id, "").await;
        Finished {
            stdout: stdout.await.expect("stdout reader"),
            stderr: stderr.await.expect("stderr reader"),
            wait,
        }
    }

    /// Runs `args` as a container and removes it.
    pub async fn run(&mut self, args: &[&str]) -> Finished {
        let id = crate::unique_id("run");
        let finished = self.run_container(&id, &crate::spec::simple(args)).await;
        self.remove(&id, false).await.expect("remove");
        finished
    }

    /// Execs `args` in a running container and collects its output.
    pub async fn exec(&mut self, container_id: &str, exec_id: &str, args: &[&str]) -> Finished {
        self.client
            .exec_process(api::ExecProcessRequest {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
                process_json: serde_json::to_vec(&crate::spec::process(args)).expect("json"),
                stdio: pipes(false),
            })
            .await
            .expect("exec");
        let stdout = self
            .read_output(container_id, exec_id, api::OutputStream::Stdout)
            .await;
        let stderr = self
            .read_output(container_id, exec_id, api::OutputStream::Stderr)
            .await;
        let wait = self.wait(container_id, exec_id).await;
        Finished {
            stdout: stdout.await.expect("stdout reader"),
            stderr: stderr.await.expect("stderr reader"),
            wait,
        }
    }
}

impl Drop for TestAgent {
    /// SIGTERM makes the agent remove its containers and exit; SIGKILL only
    /// if it does not within ten seconds.
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        // Close the connection first so the agent's graceful stop need not
        // wait for it.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.client =
                AgentClient::new(Endpoint::from_static("http://closed.invalid").connect_lazy());
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

async fn connect(socket: &Path) -> AgentClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "hull-agent did not create {} in time",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let socket = socket.to_owned();
    let channel = Endpoint::from_static("http://hull-agent.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect to hull-agent");
    AgentClient::new(channel)
}
