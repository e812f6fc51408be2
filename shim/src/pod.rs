//! The pod's VM: booted on the first container, with the agent reached over
//! hybrid vsock and the shared directory exported by virtiofsd; watched
//! until it is stopped, so that a VMM that dies is noticed at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hull_hypervisor::{Backend, HullVmm, SHARED_FS_TAG, Vm, VmConfig};
use hull_proto::v1 as api;
use hull_proto::v1::AGENT_VSOCK_PORT;
use tokio::sync::watch;

use crate::agent::{self, Agent};
use crate::cgroup::PodCgroup;
use crate::config::Config;
use crate::error::{Result, ShimError};
use crate::mounts::{GUEST_SHARED_DIR, SharedDir, unmount_below};
use crate::network::{self, Attached, PodNetwork};
use crate::pod_dir::PodDir;

/// Under TCG a boot takes seconds; this only bounds one that hangs.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// From agent-ready to the sandbox set up in the guest: well under a second
/// normally, even emulated.
const CREATE_SANDBOX_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest gets to power itself off after DestroySandbox.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the VM's processes are checked on.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// What the pod is made of.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub id: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub hostname: String,
    /// The pod's network namespace, where CNI set up its interfaces.
    pub netns: Option<PathBuf>,
    /// The sandbox spec's `linux.cgroupsPath`: the VM and the shim run in
    /// that cgroup (see [`crate::cgroup`]); none leaves them where they are.
    pub cgroups_path: Option<String>,
}

/// What the guest gets of the pod's network.
#[derive(Debug, Default)]
struct GuestNetwork {
    devices: Vec<hull_hypervisor::NetDevice>,
    interfaces: Vec<api::Interface>,
    routes: Vec<api::Route>,
}

/// A VM that booted, with its agent's sandbox set up.
struct Booted {
    vm: Arc<Mutex<Option<Vm>>>,
    agent: Agent,
    gone: watch::Receiver<Option<String>>,
    gone_tx: Arc<watch::Sender<Option<String>>>,
    watcher: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
pub struct Pod {
    pub id: String,
    dir: PathBuf,
    vm: Arc<Mutex<Option<Vm>>>,
    agent: Agent,
    /// Why the VM is gone, once it is.
    gone: watch::Receiver<Option<String>>,
    gone_tx: Arc<watch::Sender<Option<String>>>,
    watcher: tokio::task::JoinHandle<()>,
    /// The tc mirroring of the pod's interfaces, undone after the VM stops.
    network: Option<PodNetwork>,
    /// The config's `default_pids_limit`, for every container of the pod
    /// (the config is read once, when the pod starts).
    pub default_pids_limit: u32,
    /// Left and removed once the VM is stopped.
    cgroup: Option<PodCgroup>,
    // Dropped after the VM: virtiofsd holds it.
    shared: SharedDir,
}

impl Pod {
    /// Boots the pod's VM and sets up its sandbox.
    pub async fn start(config: &Config, spec: &PodSpec) -> Result<Self> {
        let layout = PodDir::new(&config.state_dir, &spec.id);
        let dir = layout.path().to_owned();
        std::fs::create_dir_all(&dir)
            .map_err(ShimError::io(format!("creating {}", dir.display())))?;
        // Every failure below must leave nothing: the directory goes with
        // this guard unless the pod starts.
        let guard = DirGuard(Some(dir.clone()));
        let shim_pid = layout.shim_pid();
        std::fs::write(&shim_pid, std::process::id().to_string())
            .map_err(ShimError::io(format!("writing {}", shim_pid.display())))?;
        // First, so that everything the pod makes the host do from here on
        // is charged to it. Dropped (left and removed) on failure, before
        // the guard removes the directory.
        let cgroup = spec
            .cgroups_path
            .as_deref()
            .map(|path| PodCgroup::enter(path, &dir))
            .transpose()?;
        let shared = SharedDir::create(&layout)?;
        let attached = match &spec.netns {
            Some(netns) => {
                let record = layout.netns();
                std::fs::write(&record, netns.as_os_str().as_encoded_bytes())
                    .map_err(ShimError::io(format!("writing {}", record.display())))?;
                let netns = netns.clone();
                let attached = tokio::task::spawn_blocking(move || network::attach(&netns))
                    .await
                    .map_err(|err| {
                        ShimError::VmGone(format!("the network task failed: {err}"))
                    })??;
                Some(attached)
            }
            None => None,
        };
        match Self::boot(config, spec, dir.clone(), shared, attached).await {
            Ok(mut pod) => {
                std::mem::forget(guard);
                pod.cgroup = cgroup;
                Ok(pod)
            }
            Err((err, network)) => {
                if let Some(network) = network {
                    network.detach();
                }
                Err(err)
            }
        }
    }

    /// Boots the VM with the pod's interfaces; on failure the mirroring is
    /// handed back so that the caller undoes it.
    async fn boot(
        config: &Config,
        spec: &PodSpec,
        dir: PathBuf,
        shared: SharedDir,
        attached: Option<Attached>,
    ) -> std::result::Result<Self, (ShimError, Option<PodNetwork>)> {
        let (network, guest_network) = match attached {
            Some(Attached {
                network,
                devices,
                interfaces,
                routes,
            }) => (
                Some(network),
                GuestNetwork {
                    devices,
                    interfaces,
                    routes,
                },
            ),
            None => (None, GuestNetwork::default()),
        };
        match Self::boot_vm(config, spec, &dir, &shared, guest_network).await {
            Ok(Booted {
                vm,
                agent,
                gone,
                gone_tx,
                watcher,
            }) => Ok(Self {
                id: spec.id.clone(),
                dir,
                vm,
                agent,
                gone,
                gone_tx,
                watcher,
                network,
                default_pids_limit: config.default_pids_limit,
                cgroup: None,
                shared,
            }),
            Err(err) => Err((err, network)),
        }
    }

    async fn boot_vm(
        config: &Config,
        spec: &PodSpec,
        dir: &Path,
        shared: &SharedDir,
        network: GuestNetwork,
    ) -> Result<Booted> {
        let backend = match Backend::detect(config.backend)? {
            Backend::Hull(hull) => Backend::Hull(HullVmm {
                vmm: config.hull_vmm.clone(),
                ..hull
            }),
            qemu => qemu,
        };
        // Read before the VM boots: a bad file fails the pod at once.
        let policy = config
            .agent_policy_file
            .as_deref()
            .map(crate::policy::load)
            .transpose()?;
        let vm_config = VmConfig {
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            shared_dir: shared.view().to_owned(),
            console_log: PodDir::at(dir).console_log(),
            work_dir: PodDir::at(dir).vm(),
            net: network.devices,
            agent_ready_port: hull_proto::v1::AGENT_READY_VSOCK_PORT,
        };
        tracing::info!(pod = %spec.id, backend = backend.name(), vcpus = spec.vcpus, memory_mib = spec.memory_mib, "booting the pod's VM");
        let pids_file = PodDir::at(dir).pids();
        let vm = tokio::task::spawn_blocking(move || -> Result<Vm> {
            let mut vm = backend.start(&vm_config)?;
            record_pids(&pids_file, &vm)?;
            for (name, pid) in vm.pids() {
                // The pod's cgroup full: the VM goes, not its shim.
                if let Err(err) = hull_hypervisor::cgroup::oom_victim_before_self(pid) {
                    tracing::warn!(%err, name, pid, "raising the OOM score");
                }
            }
            vm.wait_for_agent(AGENT_VSOCK_PORT, BOOT_TIMEOUT)?;
            tracing::info!(timeline = %vm.timeline(), "the pod's VM is up");
            Ok(vm)
        })
        .await
        .map_err(|err| ShimError::VmGone(format!("the boot task failed: {err}")))??;
        let uds = vm.vsock_uds().to_owned();
        let vm = Arc::new(Mutex::new(Some(vm)));
        let sandbox_request = api::CreateSandboxRequest {
            hostname: spec.hostname.clone(),
            mounts: vec![api::SharedMount {
                source: SHARED_FS_TAG.into(),
                target: GUEST_SHARED_DIR.into(),
                fstype: "virtiofs".into(),
                ..Default::default()
            }],
            interfaces: network.interfaces,
            routes: network.routes,
            policy,
            ..Default::default()
        };
        // Bounded: a guest that accepted the vsock connection and then
        // hangs (the soak saw one in a few dozen QEMU TCG boots) must fail
        // the pod, whose VM then goes with `vm`, rather than hold
        // RunPodSandbox forever.
        let set_up = async {
            let mut agent = agent::connect(uds).await?;
            agent.create_sandbox(sandbox_request).await?;
            Ok::<_, ShimError>(agent)
        };
        let agent = tokio::time::timeout(CREATE_SANDBOX_TIMEOUT, set_up)
            .await
            .map_err(|_| {
                ShimError::VmGone(format!(
                    "the agent did not answer CreateSandbox within {} s",
                    CREATE_SANDBOX_TIMEOUT.as_secs()
                ))
            })??;
        let (gone_tx, gone) = watch::channel(None);
        let gone_tx = Arc::new(gone_tx);
        let watcher = tokio::spawn(watch_vm(Arc::clone(&vm), Arc::clone(&gone_tx)));
        Ok(Booted {
            vm,
            agent,
            gone,
            gone_tx,
            watcher,
        })
    }

    /// The pod's directory on the host (shared directory, VM sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn agent(&self) -> Agent {
        self.agent.clone()
    }

    pub fn shared(&self) -> &SharedDir {
        &self.shared
    }

    /// Resolves with the reason once the VM is gone.
    pub fn gone(&self) -> watch::Receiver<Option<String>> {
        self.gone.clone()
    }

    /// What kills the VM at once, from anywhere (the task state machine,
    /// when the guest does not answer).
    pub fn killer(&self) -> VmKiller {
        VmKiller {
            vm: Arc::clone(&self.vm),
            gone: Arc::clone(&self.gone_tx),
        }
    }

    /// Pauses or resumes the whole VM, where the backend can.
    pub async fn set_paused(&self, paused: bool) -> Result<()> {
        let vm = Arc::clone(&self.vm);
        tokio::task::spawn_blocking(move || {
            let guard = vm.lock().unwrap_or_else(PoisonError::into_inner);
            let vm = guard
                .as_ref()
                .ok_or_else(|| ShimError::VmGone("stopped".into()))?;
            if paused { vm.pause() } else { vm.resume() }.map_err(ShimError::from)
        })
        .await
        .map_err(|err| ShimError::VmGone(err.to_string()))?
    }

    /// Stops the VM and removes everything the pod had on the host. The
    /// caller asked the guest to power off first (DestroySandbox), or
    /// killed the VM ([`VmKiller`]) when the guest did not answer.
    pub async fn stop(self) {
        self.watcher.abort();
        let alive = self.gone.borrow().is_none();
        let vm = self
            .vm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Whatever still waits on the VM (a process's exit, the OOM
        // events) ends now.
        set_gone(&self.gone_tx, "stopped".into());
        if let Some(vm) = vm {
            let clean = tokio::task::spawn_blocking(move || vm.shutdown(SHUTDOWN_TIMEOUT))
                .await
                .unwrap_or(false);
            if alive && !clean {
                tracing::warn!(pod = %self.id, "the guest did not power off; its VM was killed");
            }
        }
        let Self {
            dir,
            shared,
            network,
            cgroup,
            ..
        } = self;
        if let Some(network) = network {
            // The taps went with the VMM; the CNI side's filters go now.
            tokio::task::spawn_blocking(move || network.detach())
                .await
                .unwrap_or_default();
        }
        if let Some(cgroup) = cgroup {
            tokio::task::spawn_blocking(move || cgroup.release())
                .await
                .unwrap_or_default();
        }
        drop(shared);
        remove_pod_dir(&dir);
    }
}

/// Polls the VM's processes; the first one to exit ends the pod, and the
/// rest of the VM is killed at once: a guest that lost its file system or
/// its vsock would otherwise run on with its processes unreachable.
async fn watch_vm(vm: Arc<Mutex<Option<Vm>>>, gone: Arc<watch::Sender<Option<String>>>) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let vm = Arc::clone(&vm);
        let status = tokio::task::spawn_blocking(move || {
            let mut guard = vm.lock().unwrap_or_else(PoisonError::into_inner);
            let reason = match guard.as_mut() {
                Some(vm) => vm.check_alive().err().map(|err| describe_exit(&err)),
                None => Some("stopped".to_owned()),
            };
            if reason.is_some()
                && let Some(vm) = guard.take()
            {
                vm.kill();
            }
            reason
        })
        .await;
        if let Ok(Some(reason)) = status {
            if set_gone(&gone, reason.clone()) {
                tracing::error!(%reason, "the pod's VM is gone");
            }
            return;
        }
    }
}

/// Records why the VM is gone, unless that is known already (the first
/// reason is the one that explains the rest). Answers whether it did.
fn set_gone(gone: &watch::Sender<Option<String>>, reason: String) -> bool {
    gone.send_if_modified(|gone| {
        if gone.is_some() {
            return false;
        }
        *gone = Some(reason);
        true
    })
}

/// Kills the pod's VM at once, without asking the guest.
#[derive(Debug, Clone)]
pub struct VmKiller {
    vm: Arc<Mutex<Option<Vm>>>,
    gone: Arc<watch::Sender<Option<String>>>,
}

impl VmKiller {
    /// Every process of the VM is killed (on a blocking thread: a kill
    /// waits for each to be reaped); `reason` is what the pod's processes
    /// are lost for.
    pub fn kill(&self, reason: String) {
        set_gone(&self.gone, reason);
        let vm = self
            .vm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(vm) = vm {
            tokio::task::spawn_blocking(move || vm.kill());
        }
    }
}

/// Why the VM is gone, as containerd's log and the tasks' errors say it:
/// "virtiofsd (pid 42) was killed by SIGKILL; last console line: ...", or,
/// when the guest kernel panicked (as it does when the agent, its init,
/// dies), the panic and the console lines that lead to it.
fn describe_exit(err: &hull_hypervisor::VmError) -> String {
    match err {
        hull_hypervisor::VmError::HelperExited {
            name,
            pid,
            status,
            console,
            ..
        } => {
            let process = format!("{name} (pid {pid}) {status}");
            // The helper's own log is a field of its own, left out here:
            // the console says what the guest did last.
            let lines: Vec<&str> = console.lines().collect();
            match lines.iter().rposition(|line| line.contains(KERNEL_PANIC)) {
                Some(at) => {
                    let panic = lines[at];
                    let panic = &panic[panic.find(KERNEL_PANIC).unwrap_or_default()..];
                    let from = at.saturating_sub(PANIC_CONTEXT_LINES);
                    format!(
                        "the guest kernel panicked ({panic}), then {process}; last console lines:\n{}",
                        lines[from..].join("\n")
                    )
                }
                None => {
                    let last = lines
                        .iter()
                        .rev()
                        .find(|line| !line.trim().is_empty())
                        .unwrap_or(&"");
                    format!("{process}; last console line: {last}")
                }
            }
        }
        other => other.to_string(),
    }
}

/// How the kernel's panic() begins its message.
const KERNEL_PANIC: &str = "Kernel panic - not syncing";
/// Console lines shown before the panic line (what the guest did last).
const PANIC_CONTEXT_LINES: usize = 5;

fn record_pids(path: &Path, vm: &Vm) -> Result<()> {
    Ok(hull_hypervisor::leftovers::write_pids_file(path, vm)?)
}

/// Removes a pod directory after unmounting whatever is still mounted in it.
/// What will not unmount keeps the directory: removing it recursively would
/// delete the content of a mount that stayed (a volume, a host directory).
pub(crate) fn remove_pod_dir(dir: &Path) {
    if !unmount_below(dir) {
        tracing::error!(dir = %dir.display(), "mounts stay below the pod directory; it is kept");
        return;
    }
    if let Err(err) = std::fs::remove_dir_all(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%err, dir = %dir.display(), "removing the pod directory");
    }
}

/// Removes the pod directory when a start fails half-way.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            remove_pod_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(console: &str) -> String {
        describe_exit(&hull_hypervisor::VmError::HelperExited {
            name: "qemu",
            pid: 42,
            status: "exited with status 0".into(),
            timeline: Box::new(hull_hypervisor::Timeline::new(std::time::Instant::now())),
            console: console.into(),
            helper_log: "qemu: terminating".into(),
        })
    }

    #[test]
    fn a_dead_process_is_named_with_its_last_console_line() {
        assert_eq!(
            exited("booting\nagent up\n"),
            "qemu (pid 42) exited with status 0; last console line: agent up"
        );
    }

    #[test]
    fn a_kernel_panic_is_reported_with_the_lines_before_it() {
        let console = (1..=10)
            .map(|n| format!("line {n}"))
            .chain([
                "[    3.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b"
                    .to_owned(),
                "[    3.1] Call Trace:".to_owned(),
            ])
            .collect::<Vec<_>>()
            .join("\n");
        let reason = exited(&console);
        assert!(
            reason.starts_with(
                "the guest kernel panicked (Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b), then qemu (pid 42) exited with status 0; last console lines:\nline 6\n"
            ),
            "{reason}"
        );
        assert!(reason.ends_with("Call Trace:"), "{reason}");
    }
}
