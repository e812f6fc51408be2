//! Pod create/delete cycles for the leak check ([`crate::leaks`]): the
//! 50-cycle soak of the suites and the 1,000-cycle one of `bench/` run this
//! same cycle.
//!
//! One cycle is what a kubelet does for a short-lived pod: RunPodSandbox in
//! a network namespace of its own (CNI bridge, so the shim makes a tap and
//! tc mirroring), one busybox container that prints a line and exits,
//! StopPodSandbox, RemovePodSandbox, and the pod's log directory removed
//! (the kubelet's part). Each step is bounded by the CRI client's call
//! timeout and the container's exit by [`EXIT_TIMEOUT`].

use std::fmt;
use std::time::{Duration, Instant};

use crate::containerd::{CRI_NAMESPACE, HULL_HANDLER};
use crate::cri::{self, ContainerSpec, CriClient, PodSpec};
use crate::hull_runtime::HullRuntime;
use crate::image::BUSYBOX_IMAGE;
use crate::leaks::{Kind, Leaks, Scope, Snapshot, wait_for_no_leaks};

/// How long a cycle's container may take to print and exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a checkpoint waits for a deleted pod's processes and mounts to
/// go before it counts them as leaked. Long enough for the worst case that
/// is not a leak: a cycle whose RunPodSandbox timed out (the client's 120 s)
/// while its VM was still booting; that shim gives up at its 180 s boot
/// timeout and exits 30 s later (`exit_if_abandoned` in shim/src/tasks.rs).
/// A clean checkpoint returns at once.
pub const SETTLE: Duration = Duration::from_secs(150);

/// Why a cycle failed: the step and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleError {
    pub cycle: usize,
    pub step: &'static str,
    pub detail: String,
}

impl fmt::Display for CycleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cycle {}: {}: {}", self.cycle, self.step, self.detail)
    }
}

impl std::error::Error for CycleError {}

/// The soak's containerd (CRI, CNI bridge, the hull runtime), its CRI
/// client and the leak scope.
#[derive(Debug)]
pub struct Soak {
    pub rt: HullRuntime,
    pub client: CriClient,
    pub scope: Scope,
    /// Where each cycle's pod gets its log directory.
    logs: std::path::PathBuf,
}

impl Soak {
    /// A containerd for the soak, with the test images in `namespace` and
    /// CRI's.
    pub async fn start(namespace: &str) -> Self {
        let rt = HullRuntime::start(namespace, true);
        let mut client = CriClient::connect(rt.containerd.cri_socket()).await;
        client.wait_for_test_images().await;
        let scope = Scope::new(&rt.containerd, &rt.state_dir);
        let logs = rt.state_dir.with_file_name("logs");
        Self {
            rt,
            client,
            scope,
            logs,
        }
    }

    /// One pod create/delete cycle (see the module documentation); returns
    /// how long it took.
    pub async fn cycle(&mut self, cycle: usize) -> Result<Duration, CycleError> {
        let started = Instant::now();
        // What the pod's guest printed last says where a stuck pod stopped.
        let state_dir = self.rt.state_dir.clone();
        let fail = |step: &'static str, detail: String| CycleError {
            cycle,
            step,
            detail: format!("{detail}{}", console_tails(&state_dir)),
        };
        let name = format!("soak-{cycle}");
        let mut spec = PodSpec::new(&name, HULL_HANDLER, &self.logs.join(&name));
        spec.host_network = false;
        let pod = self.client.run_pod(&spec).await.map_err(|err| {
            self.scope.track_running_shims();
            fail("RunPodSandbox", err.to_string())
        })?;
        self.scope.track(CRI_NAMESPACE, &pod.id);
        let result = self.run_one_container(&pod).await;
        // The pod goes whatever happened to the container.
        let stopped = self.client.stop_pod(&pod.id).await;
        let removed = self.client.remove_pod(&pod.id).await;
        let _ = std::fs::remove_dir_all(&spec.log_directory);
        result.map_err(|(step, detail)| fail(step, detail))?;
        stopped.map_err(|err| fail("StopPodSandbox", err.to_string()))?;
        removed.map_err(|err| fail("RemovePodSandbox", err.to_string()))?;
        Ok(started.elapsed())
    }

    /// A pod left running (a container sleeping in it), to show that a
    /// snapshot sees what a pod holds; [`Self::stop_probe`] removes it.
    pub async fn start_probe(&mut self) -> cri::Pod {
        let mut spec = PodSpec::new("soak-probe", HULL_HANDLER, &self.logs.join("probe"));
        spec.host_network = false;
        let pod = self.client.run_pod(&spec).await.unwrap_or_else(|err| {
            panic!(
                "probe RunPodSandbox: {err}\n{}",
                self.rt.containerd.log_tail(80)
            )
        });
        self.scope.track(CRI_NAMESPACE, &pod.id);
        let sleeper = ContainerSpec::new("sleeper", BUSYBOX_IMAGE, &["sleep", "1000"]);
        let id = self
            .client
            .run_container(&pod, &sleeper)
            .await
            .unwrap_or_else(|err| panic!("probe container: {err}"));
        self.scope.track(CRI_NAMESPACE, &id);
        pod
    }

    pub async fn stop_probe(&mut self, pod: &cri::Pod) {
        self.client
            .stop_pod(&pod.id)
            .await
            .expect("probe StopPodSandbox");
        self.client
            .remove_pod(&pod.id)
            .await
            .expect("probe RemovePodSandbox");
        let _ = std::fs::remove_dir_all(&pod.spec.log_directory);
    }

    async fn run_one_container(&mut self, pod: &cri::Pod) -> Result<(), (&'static str, String)> {
        let container = ContainerSpec::new("echo", BUSYBOX_IMAGE, &["echo", "soak-ok"]);
        let id = self
            .client
            .run_container(pod, &container)
            .await
            .map_err(|err| ("CreateContainer/StartContainer", err.to_string()))?;
        self.scope.track(CRI_NAMESPACE, &id);
        let code = self
            .client
            .wait_exited(&id, EXIT_TIMEOUT)
            .await
            .map_err(|status| ("wait for the container", format!("{status:?}")))?;
        let out = cri::log_text(&pod.log_file(&container.log_path()), "stdout");
        if code != 0 || out != "soak-ok\n" {
            return Err(("the container's output", format!("exit {code}, {out:?}")));
        }
        Ok(())
    }

    /// A snapshot now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::take(&self.scope)
    }

    /// The snapshot to count leaks against, taken once no pod process is
    /// left (at most [`SETTLE`] after the last pod was removed). Take it
    /// after a first cycle: that one leaves what every later pod reuses
    /// (the CNI bridge's IPAM record, CRI's directories).
    pub fn baseline(&self) -> Snapshot {
        let deadline = Instant::now() + SETTLE;
        loop {
            let snapshot = self.snapshot();
            if snapshot.items[&Kind::Processes].is_empty() || Instant::now() >= deadline {
                return snapshot;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What has leaked since `baseline`, after giving the last pod's
    /// processes [`SETTLE`] to go.
    pub fn leaks_since(&self, baseline: &Snapshot) -> Leaks {
        wait_for_no_leaks(&self.scope, baseline, SETTLE)
    }
}

/// The last console lines of every pod directory under `state_dir`.
fn console_tails(state_dir: &std::path::Path) -> String {
    let mut out = String::new();
    for pod in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        let console = std::fs::read_to_string(pod.path().join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        out.push_str(&format!(
            "\n{} console, last lines:\n{}",
            pod.path().display(),
            lines[lines.len().saturating_sub(8)..].join("\n")
        ));
    }
    out
}
