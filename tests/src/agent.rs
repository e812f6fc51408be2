//! A real `hull-agent` on the host, in its own mount namespace, serving on a
//! Unix socket: the agent's test mode.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hull_proto::v1::agent_client::AgentClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub use crate::driver::{AgentUnderTest, Finished, pipes, process_ref};

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

#[derive(Debug)]
pub struct TestAgent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub client: AgentClient<Channel>,
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
}

impl AgentUnderTest for TestAgent {
    fn client(&mut self) -> &mut AgentClient<Channel> {
        &mut self.client
    }

    fn log(&self) -> String {
        TestAgent::log(self)
    }

    /// On the host the agent sees the same paths as the test.
    fn rootfs(&self, name: &str) -> PathBuf {
        crate::rootfs::busybox(&self.dir.path().join("rootfs").join(name))
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
