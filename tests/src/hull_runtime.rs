//! A private containerd with the `hull` runtime: the shim from this
//! workspace, a Hull config file (guest image, hull-vmm, a private state
//! directory, small VMs) and the test images; how the suites run tasks and
//! CRI pods under it; plus what a test checks was left behind.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::containerd::{self, Containerd, HULL_HANDLER, HULL_RUNTIME};
use crate::cri::{CriClient, Pod, PodSpec};
use crate::kvm_host::EXPECT_BACKEND;

/// What the tests' pods get unless a test says otherwise.
pub const TEST_MEMORY_MIB: u32 = 256;

#[derive(Debug)]
pub struct HullRuntime {
    // Dropped first: it kills the shims, which own the VMs.
    pub containerd: Containerd,
    /// The Hull config file given to the shim through `HULL_CONFIG`.
    pub config_path: PathBuf,
    /// The shim's `state_dir`: one directory per pod.
    pub state_dir: PathBuf,
    /// Where the test images are, and so where [`Self::run`] runs tasks.
    namespace: String,
    // After containerd (and so its shims) and before the directory: what
    // a failed test left of its pods.
    _pods_cleanup: PodsCleanup,
    _dir: tempfile::TempDir,
}

/// Kills the processes that outlived their shim (a test that killed it, a
/// shim that failed) and unmounts the pods' rootfs and shared directories,
/// which are under the state directory rather than containerd's.
#[derive(Debug)]
struct PodsCleanup {
    state_dir: PathBuf,
}

impl Drop for PodsCleanup {
    fn drop(&mut self) {
        let marker = self.state_dir.as_os_str().as_encoded_bytes();
        let stragglers: Vec<i32> = containerd::processes()
            .into_iter()
            .filter(|(_, cmdline)| cmdline.windows(marker.len()).any(|part| part == marker))
            .map(|(pid, _)| pid)
            .filter(|pid| *pid as u32 != std::process::id())
            .collect();
        containerd::kill_all(&stragglers);
        containerd::unmount_all_under(&self.state_dir);
    }
}

impl HullRuntime {
    /// containerd with the hull runtime and the test images in `namespace`
    /// (and in CRI's when `cri` is set). CRI pods get network namespaces of
    /// their own on the CNI bridge of
    /// [`crate::containerd::ContainerdBuilder::cni_bridge`]: the hull runtime
    /// refuses pods on the node's network.
    pub fn start(namespace: &str, cri: bool) -> Self {
        Self::start_with_config(namespace, cri, "")
    }

    /// [`Self::start`] with `extra` (TOML lines) added to the Hull config.
    pub fn start_with_config(namespace: &str, cri: bool, extra: &str) -> Self {
        Self::start_with_options(namespace, cri, extra, crate::vm::guest_image())
    }

    /// [`Self::start_with_config`] with another guest image (kernel,
    /// initramfs), such as [`crate::vm::hang_guest_image`].
    pub fn start_with_guest(
        namespace: &str,
        cri: bool,
        extra: &str,
        guest: (PathBuf, PathBuf),
    ) -> Self {
        Self::start_with_options(namespace, cri, extra, guest)
    }

    fn start_with_options(
        namespace: &str,
        cri: bool,
        extra: &str,
        (kernel, initrd): (PathBuf, PathBuf),
    ) -> Self {
        // Short: pod directories hold Unix sockets.
        let dir = tempfile::Builder::new()
            .prefix("hs-")
            .tempdir_in("/tmp")
            .expect("hull state dir");
        let state_dir = dir.path().join("s");
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            format!(
                "kernel = {kernel:?}\ninitrd = {initrd:?}\nhull_vmm = {:?}\nstate_dir = {state_dir:?}\ndefault_memory_mib = {TEST_MEMORY_MIB}\nlog_level = \"debug\"\n{extra}",
                crate::workspace_binary("hull-vmm").display().to_string(),
            ),
        )
        .expect("hull config");
        let mut builder = Containerd::builder();
        if cri {
            builder = builder.cni_bridge();
        }
        let containerd = builder
            .hull_shim()
            .env("HULL_CONFIG", &config_path)
            .env(
                "HULL_SHIM_LOG",
                "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info",
            )
            .start();
        containerd.import_test_images(namespace);
        if cri {
            containerd.import_cri_images();
        }
        Self {
            containerd,
            config_path,
            _pods_cleanup: PodsCleanup {
                state_dir: state_dir.clone(),
            },
            state_dir,
            namespace: namespace.to_owned(),
            _dir: dir,
        }
    }

    /// `ctr run --runtime io.containerd.hull.v2 ARGS…` in the namespace
    /// the runtime was started with.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["--runtime", HULL_RUNTIME];
        full.extend_from_slice(args);
        self.containerd.ctr_run(&self.namespace, &full)
    }

    /// [`Self::run`], which must succeed; returns its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        self.containerd
            .expect_success(&format!("ctr run {args:?}"), self.run(args))
    }

    /// The status `ctr tasks ls` gives task `id` (RUNNING, PAUSED,
    /// STOPPED…); `None` when there is no such task.
    pub fn task_status(&self, id: &str) -> Option<String> {
        self.containerd
            .ctr_ok(&["-n", &self.namespace, "tasks", "ls"])
            .lines()
            .find(|line| line.split_whitespace().next() == Some(id))
            .and_then(|line| line.split_whitespace().nth(2).map(str::to_owned))
    }

    /// Waits up to `timeout` for task `id` to be STOPPED.
    pub fn wait_stopped(&self, id: &str, timeout: Duration) {
        crate::faults::poll(&format!("{id} to stop"), timeout, || {
            (self.task_status(id).as_deref() == Some("STOPPED")).then_some(())
        });
    }

    /// [`PodSpec::new`] for the hull handler, in a network namespace of its
    /// own, its logs beside the state directory.
    pub fn pod_spec(&self, name: &str) -> PodSpec {
        let mut spec = PodSpec::new(name, HULL_HANDLER, &self.state_dir.with_file_name("logs"));
        spec.host_network = false;
        spec
    }

    /// A CRI client of this containerd, once it has the test images, and
    /// the pod it ran from `spec`; a pod that does not start fails the test
    /// with containerd's log, where the shim says why.
    pub async fn run_cri_pod(&self, spec: &PodSpec) -> (CriClient, Pod) {
        let mut client = CriClient::connect(self.containerd.cri_socket()).await;
        client.wait_for_test_images().await;
        let pod = client.run_pod(spec).await.unwrap_or_else(|err| {
            // The guest's console says what the shim could not say before
            // CRI's deadline ran out (a boot that hangs).
            let consoles: Vec<String> = self
                .pod_dirs()
                .iter()
                .map(|dir| {
                    format!(
                        "console of {}:\n{}",
                        dir.display(),
                        crate::faults::last_lines(&dir.join("console.log"), 40)
                    )
                })
                .collect();
            panic!(
                "RunPodSandbox: {err}\n{}\n{}",
                self.containerd.log_tail(80),
                consoles.join("\n")
            )
        });
        (client, pod)
    }

    /// The pod directories that exist now.
    pub fn pod_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.state_dir)
            .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default()
    }

    /// The VM processes (name, pid) of a running pod, from its pids file.
    pub fn vm_processes(pod_dir: &Path) -> Vec<(String, i32)> {
        std::fs::read_to_string(pod_dir.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (name, pid) = line.split_once(' ')?;
                Some((name.to_owned(), pid.trim().parse().ok()?))
            })
            .collect()
    }

    /// In the KVM test host, where [`EXPECT_BACKEND`] names the VMM every
    /// pod must run under: there is a pod in `pod_dirs`, and each runs
    /// under that VMM. Elsewhere nothing, since the host picks the backend.
    pub fn check_backend(pod_dirs: &[PathBuf]) {
        let Ok(expected) = std::env::var(EXPECT_BACKEND) else {
            return;
        };
        assert!(!pod_dirs.is_empty(), "no pod is running");
        for pod in pod_dirs {
            let names: Vec<String> = Self::vm_processes(pod)
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            assert!(
                names.contains(&expected),
                "{} runs {names:?}, not {expected}",
                pod.display()
            );
        }
    }

    /// Everything of Hull's still on the host: live processes that name the
    /// state directory (VMMs and their helpers), shims, mounts and pod
    /// directories under the state directory. Waits up to `patience` for
    /// it to go.
    pub fn leftovers(&self, patience: Duration) -> Vec<String> {
        let deadline = Instant::now() + patience;
        loop {
            let found = self.leftovers_now();
            if found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leftovers_now(&self) -> Vec<String> {
        let mut found = Vec::new();
        let marker = self.state_dir.display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&marker) && containerd::process_state(pid).is_some_and(|s| s != 'Z')
            {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
        for pid in self.containerd.shim_pids() {
            found.push(format!("shim {pid}"));
        }
        for mount in containerd::mounts_under(&self.state_dir) {
            found.push(format!("mount {}", mount.display()));
        }
        for dir in self.pod_dirs() {
            found.push(format!("pod directory {}", dir.display()));
        }
        found
    }
}
