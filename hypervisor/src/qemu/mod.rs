//! The QEMU backend: `qemu-system-x86_64 -machine microvm`, `virtiofsd` for
//! the shared directory and `vhost-device-vsock` for hybrid vsock.

mod args;
mod vm;

pub use args::{KERNEL_CMDLINE, qemu_args};
pub use vm::QemuVm;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::console::Console;
use crate::host::{Accel, KvmFacts};
use crate::process::{Helper, find_program};
use crate::timeline::Timeline;
use crate::{VmConfig, VmError};

/// How long a vhost-user helper may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

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
        }
    }

    /// Starts the helpers and QEMU. The VM is booting when this returns;
    /// [`QemuVm::wait_for_agent`] waits for the agent.
    pub fn start(&self, config: &VmConfig) -> Result<QemuVm, VmError> {
        config.validate()?;
        let qemu = find_program(&self.qemu)?;
        let virtiofsd = find_program(&self.virtiofsd)?;
        let vhost_vsock = find_program(&self.vhost_vsock)?;

        let work_dir = WorkDir::create(&config.work_dir)?;
        let fs_socket = work_dir.path().join("fs.sock");
        let vsock_socket = work_dir.path().join("vsock.sock");
        let vsock_uds = work_dir.path().join("vsock.uds");

        let mut virtiofsd = Helper::spawn(
            "virtiofsd",
            Command::new(virtiofsd)
                .arg("--socket-path")
                .arg(&fs_socket)
                .arg("--shared-dir")
                .arg(&config.shared_dir)
                .args(["--cache", "auto", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(work_dir.path(), "virtiofsd.log")?),
        )?;
        wait_for_socket(&mut virtiofsd, &fs_socket)?;

        let mut vsock = Helper::spawn(
            "vhost-device-vsock",
            Command::new(vhost_vsock)
                .args(["--guest-cid", &GUEST_CID.to_string()])
                .arg("--socket")
                .arg(&vsock_socket)
                .arg("--uds-path")
                .arg(&vsock_uds)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(work_dir.path(), "vhost-device-vsock.log")?),
        )?;
        wait_for_socket(&mut vsock, &vsock_socket)?;

        let started = Instant::now();
        let mut vm = Helper::spawn(
            "qemu",
            Command::new(qemu)
                .args(qemu_args(
                    config,
                    self.accel,
                    self.tsc_khz,
                    &fs_socket,
                    &vsock_socket,
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log_file(work_dir.path(), "qemu.log")?),
        )?;
        let output = vm
            .child()
            .stdout
            .take()
            .ok_or_else(|| VmError::io("qemu", std::io::Error::other("no console pipe")))?;
        let console = Console::start(output, &config.console_log, started).map_err(|err| {
            VmError::io(format!("console log {}", config.console_log.display()), err)
        })?;
        Ok(QemuVm::new(
            vm,
            vec![virtiofsd, vsock],
            console,
            Timeline::new(started),
            work_dir,
            vsock_uds,
        ))
    }
}

fn log_file(dir: &Path, name: &str) -> Result<File, VmError> {
    let path = dir.join(name);
    File::create(&path).map_err(|err| VmError::io(format!("creating {}", path.display()), err))
}

fn wait_for_socket(helper: &mut Helper, socket: &Path) -> Result<(), VmError> {
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    while !socket.exists() {
        if let Some(status) = helper.exited() {
            return Err(VmError::HelperExited {
                name: helper.name,
                status: status.to_string(),
                timeline: Timeline::new(Instant::now()),
                console: String::new(),
            });
        }
        if Instant::now() >= deadline {
            return Err(VmError::io(
                helper.name,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{} did not appear in {SOCKET_TIMEOUT:?}", socket.display()),
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The VM's private directory of sockets and helper logs, removed with the
/// VM (or with a start that failed half-way).
#[derive(Debug)]
pub(crate) struct WorkDir(PathBuf);

impl WorkDir {
    fn create(path: &Path) -> Result<Self, VmError> {
        std::fs::create_dir_all(path)
            .map_err(|err| VmError::io(format!("creating {}", path.display()), err))?;
        Ok(Self(path.to_owned()))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
