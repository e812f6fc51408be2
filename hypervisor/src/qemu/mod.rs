//! The QEMU backend: `qemu-system-x86_64 -machine microvm`, `virtiofsd` for
//! the shared directory and `vhost-device-vsock` for hybrid vsock.
//!
//! vhost-device-vsock is confined at spawn ([`crate::confine`]): it runs as
//! [`Qemu::helper_run_as`] in namespaces of its own, with no capabilities,
//! under a seccomp filter. Its sockets live in a `vsock/` subdirectory of
//! the work directory that belongs to that user, so it can create them and
//! nothing else there. QEMU itself becomes [`Qemu::run_as`] once it has
//! built the machine (`-runas`).

mod args;

pub use args::{KERNEL_CMDLINE, qemu_args};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use hull_vmm::caps::RunAs;

use crate::confine::{Sandbox, VHOST_VSOCK};
use crate::console::Console;
use crate::host::{Accel, KvmFacts};
use crate::process::{Helper, find_program};
use crate::timeline::Timeline;
use crate::vm::Vm;
use crate::work_dir::{WorkDir, wait_for_socket};
use crate::{VmConfig, VmError};

/// The guest CID vhost-device-vsock gives the VM; the host side is
/// addressed through the Unix socket, so every VM can use the same one.
const GUEST_CID: u32 = 3;

/// The programs and acceleration the backend uses.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub qemu: String,
    pub virtiofsd: String,
    pub vhost_vsock: String,
    pub accel: Accel,
    /// Given to a TCG guest so it need not calibrate its TSC.
    pub tsc_khz: Option<u64>,
    /// The user and group vhost-device-vsock runs as.
    pub helper_run_as: RunAs,
    /// The user and group QEMU continues as once set up (`-runas`).
    pub run_as: RunAs,
}

impl Qemu {
    /// The default programs from PATH, with KVM only where it can run a
    /// normal guest. The choice and its reason are logged.
    pub fn detect() -> Self {
        let (accel, reason) = KvmFacts::probe().choose();
        tracing::info!(accel = accel.as_str(), %reason, "QEMU acceleration");
        Self {
            qemu: "qemu-system-x86_64".into(),
            virtiofsd: "virtiofsd".into(),
            vhost_vsock: "vhost-device-vsock".into(),
            accel,
            tsc_khz: crate::host::tsc_khz(),
            helper_run_as: crate::confine::NOBODY,
            run_as: crate::confine::NOBODY,
        }
    }

    /// Starts the helpers and QEMU. The VM is booting when this returns;
    /// [`Vm::wait_for_agent`] waits for the agent.
    pub fn start(&self, config: &VmConfig) -> Result<Vm, VmError> {
        config.validate()?;
        let qemu = find_program(&self.qemu)?;
        let virtiofsd = find_program(&self.virtiofsd)?;
        let vhost_vsock = find_program(&self.vhost_vsock)?;

        let work_dir = WorkDir::create(&config.work_dir)?;
        let fs_socket = work_dir.path().join("fs.sock");
        let vsock_dir = helper_dir(&work_dir, "vsock", self.helper_run_as)?;
        let vsock_socket = vsock_dir.join("vsock.sock");
        let vsock_uds = vsock_dir.join("vsock.uds");

        let virtiofsd =
            crate::virtiofsd::start(&virtiofsd, &config.shared_dir, &fs_socket, &work_dir)?;
        let vsock_host =
            crate::vsock::HostVsock::listen(vsock_uds.clone(), config.agent_ready_port)?;
        vsock_host.give_ready_socket_to(self.helper_run_as)?;

        let mut vsock_command = Command::new(vhost_vsock);
        Sandbox::new("vhost-device-vsock", self.helper_run_as, &VHOST_VSOCK)?
            .apply(&mut vsock_command);
        let mut vsock = Helper::spawn(
            "vhost-device-vsock",
            vsock_command
                .args(["--guest-cid", &GUEST_CID.to_string()])
                .arg("--socket")
                .arg(&vsock_socket)
                .arg("--uds-path")
                .arg(&vsock_uds)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(work_dir.log_file("vhost-device-vsock.log")?),
        )?;
        wait_for_socket(&mut vsock, &vsock_socket)?;

        let started = Instant::now();
        let mut command = Command::new(qemu);
        let tap_fds = crate::net::pass_taps(&mut command, &config.net)?;
        let mut vm = Helper::spawn(
            "qemu",
            command
                .args(qemu_args(
                    config,
                    self.accel,
                    self.tsc_khz,
                    &fs_socket,
                    &vsock_socket,
                    &tap_fds,
                    self.run_as,
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(work_dir.log_file("qemu.log")?),
        )?;
        let output = vm
            .child()
            .stdout
            .take()
            .ok_or_else(|| VmError::io("qemu", std::io::Error::other("no console pipe")))?;
        let console = Console::start(output, &config.console_log, started).map_err(|err| {
            VmError::io(format!("console log {}", config.console_log.display()), err)
        })?;
        Ok(Vm::new(
            vm,
            vec![virtiofsd, vsock],
            console,
            Timeline::new(started),
            work_dir,
            vsock_host,
            None,
        ))
    }
}

/// A subdirectory of the work directory for a confined helper's sockets,
/// owned by the user it runs as and closed to everyone else.
fn helper_dir(work_dir: &WorkDir, name: &str, owner: RunAs) -> Result<PathBuf, VmError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = work_dir.path().join(name);
    let fail = |what: &str, err| VmError::io(format!("{what} {}", dir.display()), err);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|err| fail("creating", err))?;
    std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid))
        .map_err(|err| fail("chowning", err))?;
    // The mode asked for is filtered by the umask.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| fail("setting the mode of", err))?;
    Ok(dir)
}
