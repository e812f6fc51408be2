//! Stubs of the seam for the unit tests: an agent that answers at once,
//! or fails or never answers the calls a test names, and a pod whose
//! "VM" is a watch channel.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::protos::api;
use futures::StreamExt;
use futures::stream::BoxStream;
use hull_proto::v1 as agent_api;
use tokio::sync::{mpsc, watch};

use crate::error::{Result, ShimError};
use crate::stdio::Copiers;
use crate::task::seam::{GuestAgent, HostResources, PodBooter, PodVm, Prepared};
use crate::task::{Exit, ProcessId, StdioPaths};

#[derive(Default)]
pub struct StubAgent {
    /// Calls that never answer.
    hang: Mutex<HashSet<&'static str>>,
    /// Calls that fail.
    fail: Mutex<HashSet<&'static str>>,
    /// Every call, in order.
    pub calls: Mutex<Vec<&'static str>>,
    next_pid: AtomicU32,
    exits: Mutex<HashMap<ProcessId, watch::Sender<Option<Exit>>>>,
    oom: Mutex<Option<mpsc::Receiver<String>>>,
}

impl StubAgent {
    pub fn hang(&self, rpc: &'static str) {
        self.hang.lock().unwrap().insert(rpc);
    }

    pub fn fail(&self, rpc: &'static str) {
        self.fail.lock().unwrap().insert(rpc);
    }

    pub fn called(&self, rpc: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| **c == rpc)
            .count()
    }

    /// The process ends in the "guest" with `status`.
    pub fn exit(&self, process: &ProcessId, status: u32) {
        self.exit_sender(process).send_replace(Some(Exit {
            status,
            at: SystemTime::now(),
        }));
    }

    fn exit_sender(&self, process: &ProcessId) -> watch::Sender<Option<Exit>> {
        self.exits
            .lock()
            .unwrap()
            .entry(process.clone())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Records the call, then hangs or fails it if told to.
    async fn enter(&self, rpc: &'static str) -> Result<()> {
        self.calls.lock().unwrap().push(rpc);
        let hang = self.hang.lock().unwrap().contains(rpc);
        if hang {
            std::future::pending::<()>().await;
        }
        let fail = self.fail.lock().unwrap().contains(rpc);
        if fail {
            return Err(ShimError::Agent(tonic::Status::internal(format!(
                "{rpc} failed"
            ))));
        }
        Ok(())
    }
}

#[async_trait]
impl GuestAgent for StubAgent {
    async fn create_container(&self, _: agent_api::CreateContainerRequest) -> Result<u32> {
        self.enter("CreateContainer").await?;
        Ok(100 + self.next_pid.fetch_add(1, Ordering::SeqCst))
    }

    async fn start_container(&self, _: &str) -> Result<()> {
        self.enter("StartContainer").await
    }

    async fn exec_process(&self, _: agent_api::ExecProcessRequest) -> Result<u32> {
        self.enter("ExecProcess").await?;
        Ok(100 + self.next_pid.fetch_add(1, Ordering::SeqCst))
    }

    async fn signal_process(&self, process: &ProcessId, signal: u32, _: bool) -> Result<()> {
        self.enter("SignalProcess").await?;
        self.exit(process, 128 + signal);
        Ok(())
    }

    async fn remove_container(&self, _: &str) -> Result<()> {
        self.enter("RemoveContainer").await
    }

    async fn set_paused(&self, _: &str, paused: bool) -> Result<()> {
        self.enter(if paused {
            "PauseContainer"
        } else {
            "ResumeContainer"
        })
        .await
    }

    async fn list_processes(&self, _: &str) -> Result<Vec<u32>> {
        self.enter("ListProcesses").await?;
        Ok(vec![100])
    }

    async fn close_stdin(&self, _: &ProcessId) -> Result<()> {
        self.enter("CloseStdin").await
    }

    async fn resize_tty(&self, _: &ProcessId, _: u32, _: u32) -> Result<()> {
        self.enter("ResizeTty").await
    }

    async fn update_container(&self, _: &str, _: Vec<u8>) -> Result<()> {
        self.enter("UpdateContainer").await
    }

    async fn stats_container(&self, _: &str) -> Result<agent_api::StatsContainerResponse> {
        self.enter("StatsContainer").await?;
        Ok(Default::default())
    }

    async fn attach_stdio(&self, _: &ProcessId, _: &StdioPaths) -> Result<Copiers> {
        self.enter("ReadOutput").await?;
        Ok(Copiers::default())
    }

    async fn destroy_sandbox(&self) -> Result<()> {
        self.enter("DestroySandbox").await
    }

    async fn wait_process(&self, process: &ProcessId) -> Result<Exit> {
        self.enter("WaitProcess").await?;
        let mut exit = self.exit_sender(process).subscribe();
        let exit = *exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ShimError::Agent(tonic::Status::unavailable("gone")))?;
        exit.ok_or_else(|| ShimError::Agent(tonic::Status::internal("no exit")))
    }

    async fn oom_events(&self) -> Result<BoxStream<'static, String>> {
        self.enter("OomEvents").await?;
        let receiver = self
            .oom
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| ShimError::Agent(tonic::Status::internal("watched twice")))?;
        Ok(tokio_stream::wrappers::ReceiverStream::new(receiver).boxed())
    }
}

/// A container's host side; counts its releases.
#[derive(Debug)]
struct StubHost(Arc<AtomicU32>);

impl HostResources for StubHost {
    fn release(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

pub struct StubPod {
    pub agent: Arc<StubAgent>,
    gone: watch::Sender<Option<String>>,
    /// Why the VM was killed, if it was.
    pub killed: Mutex<Option<String>>,
    pub stopped: AtomicU32,
    pub released: Arc<AtomicU32>,
    /// Where the test sends the guest's OOM events.
    pub oom: mpsc::Sender<String>,
}

impl StubPod {
    pub fn new() -> Arc<Self> {
        let (oom, receiver) = mpsc::channel(64);
        let agent = StubAgent {
            oom: Mutex::new(Some(receiver)),
            ..Default::default()
        };
        Arc::new(Self {
            agent: Arc::new(agent),
            gone: watch::channel(None).0,
            killed: Mutex::default(),
            stopped: AtomicU32::new(0),
            released: Arc::default(),
            oom,
        })
    }

    pub fn killed(&self) -> Option<String> {
        self.killed.lock().unwrap().clone()
    }
}

#[async_trait]
impl PodVm for StubPod {
    fn agent(&self) -> Arc<dyn GuestAgent> {
        Arc::clone(&self.agent) as Arc<dyn GuestAgent>
    }

    fn gone(&self) -> watch::Receiver<Option<String>> {
        self.gone.subscribe()
    }

    fn prepare(
        &self,
        _: &str,
        _: &Path,
        spec: serde_json::Value,
        _: &[api::Mount],
    ) -> Result<Prepared> {
        Ok(Prepared {
            oci_spec_json: serde_json::to_vec(&spec).unwrap(),
            guest_rootfs: "/rootfs".into(),
            pod_mounts: Vec::new(),
            host: Box::new(StubHost(Arc::clone(&self.released))),
        })
    }

    fn kill(&self, reason: String) {
        self.killed.lock().unwrap().get_or_insert(reason.clone());
        self.gone.send_if_modified(|gone| {
            let first = gone.is_none();
            gone.get_or_insert(reason);
            first
        });
    }

    async fn stop(&self) {
        self.stopped.fetch_add(1, Ordering::SeqCst);
        self.gone.send_if_modified(|gone| {
            let first = gone.is_none();
            gone.get_or_insert_with(|| "stopped".into());
            first
        });
    }
}

/// Boots the one stub pod, counting the boots.
pub struct StubBooter {
    pub pod: Arc<StubPod>,
    pub boots: AtomicU32,
    /// Each boot waits for this to be true.
    pub booted: watch::Sender<bool>,
}

impl StubBooter {
    pub fn new(pod: Arc<StubPod>) -> Arc<Self> {
        Arc::new(Self {
            pod,
            boots: AtomicU32::new(0),
            booted: watch::channel(true).0,
        })
    }
}

#[async_trait]
impl PodBooter for StubBooter {
    async fn boot(
        &self,
        _: &api::CreateTaskRequest,
        _: &serde_json::Value,
    ) -> Result<Arc<dyn PodVm>> {
        self.boots.fetch_add(1, Ordering::SeqCst);
        let _ = self.booted.subscribe().wait_for(|booted| *booted).await;
        Ok(Arc::clone(&self.pod) as Arc<dyn PodVm>)
    }
}
