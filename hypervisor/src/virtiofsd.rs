//! `virtiofsd`, which serves the pod's shared directory to either backend.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::VmError;
use crate::process::Helper;
use crate::work_dir::{WorkDir, wait_for_socket};

/// Starts virtiofsd on `shared_dir` and waits for its vhost-user socket.
///
/// Everything below `shared_dir` is the guest's to write through its
/// mount's own flags, and a guest that mounts the share itself (a
/// privileged container can) writes it at will: the caller exports a view
/// whose top level is a read-only mount, with writable submounts only where
/// the guest is meant to write (the shim's `SharedDir`), and never resolves
/// a path through what the guest can write. virtiofsd's namespace receives
/// mounts made after it starts only if `shared_dir` is a shared or slave
/// mount from the start.
///
/// `--cache auto` lets the guest cache what the host does not change behind
/// its back, which is the case for a container's rootfs and volumes.
pub(crate) fn start(
    program: &Path,
    shared_dir: &Path,
    socket: &Path,
    work_dir: &WorkDir,
) -> Result<Helper, VmError> {
    let mut virtiofsd = Helper::spawn(
        "virtiofsd",
        Command::new(program)
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared_dir)
            .args(["--cache", "auto", "--log-level", "warn"])
            // Its defaults, stated because the guest's reach depends on
            // them: a mount namespace pivoted into `shared_dir` and a
            // seccomp filter that kills it on anything else.
            .args(["--sandbox", "namespace", "--seccomp", "kill"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(work_dir.log_file("virtiofsd.log")?),
    )?;
    wait_for_socket(&mut virtiofsd, socket)?;
    Ok(virtiofsd)
}
