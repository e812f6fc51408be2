//! A real guest: the guest image booted by a backend (QEMU, or hull-vmm where
//! KVM has hardware virtualization), with the agent as PID 1, reached over
//! hybrid vsock, and a shared directory over virtio-fs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_hypervisor::{Backend, BackendKind, HullVmm, SHARED_FS_TAG, Vm, VmConfig};
use hull_proto::v1 as api;
use hull_proto::v1::AGENT_VSOCK_PORT;
use hull_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::driver::AgentUnderTest;

/// Boot under TCG takes seconds; this only bounds a boot that hangs.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the agent mounts the shared directory inside the guest.
pub const GUEST_SHARED_DIR: &str = "/run/hull-agent/sandbox/shared/hullfs";

/// The guest image that `guest-image/build.sh` built.
pub fn guest_image() -> (PathBuf, PathBuf) {
    // The same defaults as guest-image/build.sh.
    let dir = std::env::var_os("HULL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::cache_dir().join("guest"));
    crate::kernel_and_initrd(&dir, "vmlinux", "guest-image/build.sh")
}

/// The guest image whose agent is built with its `test-hang` feature (a
/// guest that never answers the RPCs its sandbox policy's `hang_rpcs`
/// names), as scripts/test.sh builds it.
pub fn hang_guest_image() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("HULL_HANG_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::cache_dir().join("guest-hang"));
    crate::kernel_and_initrd(&dir, "vmlinux", "scripts/build-hang-guest.sh")
}

/// The backend `kind` picks on this host, running this workspace's hull-vmm.
pub fn backend(kind: BackendKind) -> Backend {
    match Backend::detect(kind).unwrap_or_else(|err| panic!("{err}")) {
        Backend::Hull(hull) => Backend::Hull(HullVmm {
            vmm: crate::workspace_binary("hull-vmm").display().to_string(),
            ..hull
        }),
        qemu => qemu,
    }
}

/// A VM configuration in a fresh temporary directory.
pub fn vm_config(dir: &Path) -> VmConfig {
    let (kernel, initrd) = guest_image();
    let shared_dir = dir.join("shared");
    std::fs::create_dir_all(&shared_dir).expect("shared dir");
    VmConfig {
        kernel,
        initrd,
        vcpus: 1,
        memory_mib: 512,
        shared_dir,
        console_log: dir.join("console.log"),
        // Short: it holds the Unix sockets.
        work_dir: PathBuf::from(format!("/tmp/hvm-{}", crate::unique_id("w"))),
        net: Vec::new(),
        agent_ready_port: hull_proto::v1::AGENT_READY_VSOCK_PORT,
    }
}

#[derive(Debug)]
pub struct TestVm {
    pub vm: Option<Vm>,
    pub config: VmConfig,
    pub dir: tempfile::TempDir,
    pub client: AgentClient<Channel>,
}

impl TestVm {
    /// Boots a guest with the host's default backend and sets up its sandbox
    /// with the shared directory.
    pub async fn boot() -> Self {
        Self::boot_with(backend(BackendKind::Auto), 1).await
    }

    /// The same, with the given backend and number of vCPUs.
    pub async fn boot_with(backend: Backend, vcpus: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hull-vm-")
            .tempdir()
            .expect("temp dir");
        let config = VmConfig {
            vcpus,
            ..vm_config(dir.path())
        };
        let started = config.clone();
        let vm = tokio::task::spawn_blocking(move || {
            let mut vm = backend.start(&started)?;
            vm.wait_for_agent(AGENT_VSOCK_PORT, BOOT_TIMEOUT)?;
            Ok::<_, hull_hypervisor::VmError>(vm)
        })
        .await
        .expect("boot task")
        .unwrap_or_else(|err| panic!("boot failed: {err}"));
        let client = connect(&vm).await;
        let mut test_vm = Self {
            vm: Some(vm),
            config,
            dir,
            client,
        };
        test_vm
            .client
            .create_sandbox(api::CreateSandboxRequest {
                hostname: "hull-vm".into(),
                mounts: vec![api::SharedMount {
                    source: SHARED_FS_TAG.into(),
                    target: GUEST_SHARED_DIR.into(),
                    fstype: "virtiofs".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|err| panic!("create sandbox: {err}\n{}", test_vm.log()));
        test_vm
    }

    pub fn vm(&self) -> &Vm {
        self.vm.as_ref().expect("the VM is running")
    }

    /// A path in the shared directory, on the host side.
    pub fn host_path(&self, relative: &str) -> PathBuf {
        self.config.shared_dir.join(relative)
    }

    /// DestroySandbox, then waits for the guest to power itself off.
    pub async fn shutdown(&mut self) -> bool {
        let _ = self
            .client
            .destroy_sandbox(api::DestroySandboxRequest {})
            .await;
        let vm = self.vm.take().expect("the VM is running");
        tokio::task::spawn_blocking(move || vm.shutdown(Duration::from_secs(30)))
            .await
            .expect("shutdown task")
    }
}

impl AgentUnderTest for TestVm {
    fn client(&mut self) -> &mut AgentClient<Channel> {
        &mut self.client
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.config.console_log).unwrap_or_default()
    }

    fn rootfs(&self, name: &str) -> PathBuf {
        crate::rootfs::busybox(&self.config.shared_dir.join(name).join("rootfs"));
        Path::new(GUEST_SHARED_DIR).join(name).join("rootfs")
    }
}

/// The shim's own client of the agent, so the tests reach it as pods do.
async fn connect(vm: &Vm) -> AgentClient<Channel> {
    hull_shim::agent::connect(vm.vsock_uds().to_owned())
        .await
        .unwrap_or_else(|err| panic!("{err}"))
}
