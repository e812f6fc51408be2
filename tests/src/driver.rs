//! Driving an agent under test, wherever it runs: on the host in test mode
//! ([`crate::agent::TestAgent`]) or in a VM ([`crate::vm::TestVm`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use hull_proto::v1 as api;
use hull_proto::v1::agent_client::AgentClient;
use serde_json::Value;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// No process in these suites runs longer than this.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

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

#[allow(async_fn_in_trait)]
pub trait AgentUnderTest {
    fn client(&mut self) -> &mut AgentClient<Channel>;

    /// The agent's log (or the guest console), for failure messages.
    fn log(&self) -> String;

    /// Makes a fresh busybox root filesystem for one container and returns
    /// its path as the agent sees it.
    fn rootfs(&self, name: &str) -> PathBuf;

    async fn create(
        &mut self,
        container_id: &str,
        spec: &Value,
        rootfs: &Path,
        stdio: Option<api::Stdio>,
    ) -> Result<u32, tonic::Status> {
        let response = self
            .client()
            .create_container(api::CreateContainerRequest {
                container_id: container_id.to_owned(),
                oci_spec_json: serde_json::to_vec(spec).expect("spec json"),
                rootfs: rootfs.display().to_string(),
                stdio,
                pod_mounts: Vec::new(),
            })
            .await?;
        Ok(response.into_inner().pid)
    }

    async fn health(&mut self) -> api::HealthResponse {
        self.client()
            .health(api::HealthRequest {})
            .await
            .expect("health")
            .into_inner()
    }

    async fn guest_details(&mut self) -> api::GuestDetailsResponse {
        self.client()
            .guest_details(api::GuestDetailsRequest {})
            .await
            .expect("guest details")
            .into_inner()
    }

    async fn start_container(&mut self, container_id: &str) -> Result<(), tonic::Status> {
        self.client()
            .start_container(api::StartContainerRequest {
                container_id: container_id.to_owned(),
            })
            .await
            .map(|_| ())
    }

    /// Reads one output stream to its end, in the background.
    async fn read_output(
        &mut self,
        container_id: &str,
        exec_id: &str,
        stream: api::OutputStream,
    ) -> JoinHandle<Vec<u8>> {
        let mut chunks = self
            .client()
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
    async fn wait(&mut self, container_id: &str, exec_id: &str) -> api::WaitProcessResponse {
        let request = api::WaitProcessRequest {
            process: process_ref(container_id, exec_id),
        };
        match tokio::time::timeout(WAIT_LIMIT, self.client().wait_process(request)).await {
            Ok(answer) => answer.expect("wait").into_inner(),
            Err(_) => panic!(
                "{container_id}/{exec_id} did not finish in {WAIT_LIMIT:?}; agent log:\n{}",
                self.log()
            ),
        }
    }

    async fn remove(&mut self, container_id: &str, force: bool) -> Result<(), tonic::Status> {
        self.client()
            .remove_container(api::RemoveContainerRequest {
                container_id: container_id.to_owned(),
                force,
            })
            .await
            .map(|_| ())
    }

    /// Creates and starts a container with stdout and stderr attached, and
    /// collects everything up to its exit. The container is left to remove.
    async fn run_container(&mut self, container_id: &str, spec: &Value) -> Finished {
        let rootfs = self.rootfs(container_id);
        if let Err(err) = self.create(container_id, spec, &rootfs, pipes(false)).await {
            panic!("create: {err}\nagent log:\n{}", self.log());
        }
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
    async fn run(&mut self, args: &[&str]) -> Finished {
        let id = crate::unique_id("run");
        let finished = self.run_container(&id, &crate::spec::simple(args)).await;
        self.remove(&id, false).await.expect("remove");
        finished
    }

    /// The processes of a container, as ListProcesses answers.
    async fn processes(&mut self, container_id: &str) -> Vec<api::ProcessInfo> {
        self.client()
            .list_processes(api::ListProcessesRequest {
                container_id: container_id.to_owned(),
            })
            .await
            .expect("list processes")
            .into_inner()
            .processes
    }

    /// Execs `args` in a running container and collects its output.
    async fn exec(&mut self, container_id: &str, exec_id: &str, args: &[&str]) -> Finished {
        self.exec_process(container_id, exec_id, &crate::spec::process(args))
            .await
    }

    /// Execs `process` (an OCI process) in a running container and collects
    /// its output.
    async fn exec_process(
        &mut self,
        container_id: &str,
        exec_id: &str,
        process: &Value,
    ) -> Finished {
        self.client()
            .exec_process(api::ExecProcessRequest {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
                process_json: serde_json::to_vec(process).expect("json"),
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
