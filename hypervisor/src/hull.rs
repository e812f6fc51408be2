//! The `hull` backend: Hull's own VMM, `hull-vmm`, with `virtiofsd` for the
//! shared directory. Its vsock device speaks hybrid vsock itself, so unlike
//! QEMU it needs no vhost-device-vsock. hull-vmm runs jailed in the VM's
//! work directory (`--jail`, which gives it its own PID, mount and network
//! namespaces), as an unprivileged user ([`HullVmm::run_as`], `--uid` and
//! `--gid`), with no capabilities and under its seccomp filter.

use std::process::{Command, Stdio};
use std::time::Instant;

use hull_vmm::caps::RunAs;

use crate::console::Console;
use crate::process::{Helper, find_program};
use crate::timeline::Timeline;
use crate::vm::Vm;
use crate::work_dir::WorkDir;
use crate::{SHARED_FS_TAG, VmConfig, VmError};

/// The guest's CID; the host side is addressed through the Unix socket, so
/// every VM can use the same one.
const GUEST_CID: u32 = 3;

/// The programs the backend runs.
#[derive(Debug, Clone)]
pub struct HullVmm {
    pub vmm: String,
    pub virtiofsd: String,
    /// The user and group hull-vmm continues as once set up. The work
    /// directory becomes theirs (the jail's root), and the hybrid vsock
    /// ready socket too, so the VMM can still connect to it.
    pub run_as: RunAs,
}

impl Default for HullVmm {
    /// The programs from PATH.
    fn default() -> Self {
        Self {
            vmm: "hull-vmm".into(),
            virtiofsd: "virtiofsd".into(),
            run_as: crate::confine::NOBODY,
        }
    }
}

impl HullVmm {
    /// Starts virtiofsd and hull-vmm. The VM is booting when this returns;
    /// [`Vm::wait_for_agent`] waits for the agent.
    pub fn start(&self, config: &VmConfig) -> Result<Vm, VmError> {
        config.validate()?;
        let vmm = find_program(&self.vmm)?;
        let virtiofsd = find_program(&self.virtiofsd)?;

        let work_dir = WorkDir::create(&config.work_dir)?;
        let fs_socket = work_dir.path().join("fs.sock");
        let vsock_uds = work_dir.path().join("vsock.uds");
        let api_socket = work_dir.path().join("api.sock");

        let virtiofsd =
            crate::virtiofsd::start(&virtiofsd, &config.shared_dir, &fs_socket, &work_dir)?;
        let vsock_host =
            crate::vsock::HostVsock::listen(vsock_uds.clone(), config.agent_ready_port)?;
        vsock_host.give_ready_socket_to(self.run_as)?;

        let started = Instant::now();
        let timeline = Timeline::new(started);
        let mut command = Command::new(vmm);
        let tap_fds = crate::net::pass_taps(&mut command, &config.net)?;
        for (device, fd) in config.net.iter().zip(&tap_fds) {
            command.arg("--net").arg(format!(
                "fd={fd},mac={},mtu={}",
                device.mac_text(),
                device.mtu
            ));
        }
        let mut vm = Helper::spawn(
            "hull-vmm",
            command
                .arg("--kernel")
                .arg(&config.kernel)
                .arg("--initrd")
                .arg(&config.initrd)
                .args(["--memory-mib", &config.memory_mib.to_string()])
                .args(["--vcpus", &config.vcpus.to_string()])
                .arg("--vsock-uds")
                .arg(&vsock_uds)
                .args(["--vsock-cid", &GUEST_CID.to_string()])
                .arg("--fs-socket")
                .arg(&fs_socket)
                .args(["--fs-tag", SHARED_FS_TAG])
                .arg("--api-socket")
                .arg(&api_socket)
                // The work directory holds every socket it uses, so it is
                // all the VMM needs to see.
                .arg("--jail")
                .arg(work_dir.path())
                .args(["--uid", &self.run_as.uid.to_string()])
                .args(["--gid", &self.run_as.gid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(work_dir.log_file("hull-vmm.log")?),
        )?;
        let output = vm
            .child()
            .stdout
            .take()
            .ok_or_else(|| VmError::io("hull-vmm", std::io::Error::other("no console pipe")))?;
        let console = Console::start(output, &config.console_log, started).map_err(|err| {
            VmError::io(format!("console log {}", config.console_log.display()), err)
        })?;
        Ok(Vm::new(
            vm,
            vec![virtiofsd],
            console,
            timeline,
            work_dir,
            vsock_host,
            Some(api_socket),
        ))
    }
}
