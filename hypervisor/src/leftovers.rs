//! Killing what a VM left behind when its owner died without stopping it
//! (the shim's cleanup after a crash, `containerd-shim-hull-v2 delete`).
//!
//! The processes are found three ways:
//! - the pids file ([`write_pids_file`]) names them once the VM has started;
//! - every VM process carries a path under the pod directory in its
//!   arguments (a socket, the jail), so a scan of `/proc` finds those an
//!   owner killed while it was still starting them never recorded;
//! - whatever is still in the sandbox's cgroup ([`crate::cgroup`]), which
//!   is then removed.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::VmError;
use crate::cgroup::SandboxCgroup;
use crate::vm::Vm;

/// How long the cgroup's removal waits for killed processes to go.
const CGROUP_PATIENCE: Duration = Duration::from_secs(5);

/// Writes the VM's processes to `path`, one "name pid" a line, for
/// [`kill_left_behind`].
pub fn write_pids_file(path: &Path, vm: &Vm) -> Result<(), VmError> {
    let text: String = vm
        .pids()
        .iter()
        .map(|(name, pid)| format!("{name} {pid}\n"))
        .collect();
    std::fs::write(path, text)
        .map_err(|err| VmError::io(format!("writing {}", path.display()), err))
}

/// What a dead owner's VM left: where to look.
#[derive(Debug, Clone, Copy)]
pub struct Remains<'a> {
    /// The pids file [`write_pids_file`] wrote (it may be missing).
    pub pids_file: &'a Path,
    /// The pod directory: a process with an argument below it is the VM's.
    pub dir: &'a Path,
    /// The sandbox cgroup's record ([`SandboxCgroup::record`]), if any.
    pub cgroup_record: Option<&'a str>,
}

/// Kills every process of the VM (never this one) and removes the
/// sandbox's cgroup; returns what it killed, "name (pid N)".
pub fn kill_left_behind(remains: Remains<'_>) -> Vec<String> {
    let mut victims = recorded_processes(remains.pids_file);
    for (name, pid) in processes_naming(remains.dir) {
        if !victims.iter().any(|(_, known)| *known == pid) {
            victims.push((name, pid));
        }
    }
    let mut killed: Vec<(String, i32)> = victims
        .into_iter()
        .filter(|(_, pid)| kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok())
        .collect();
    if let Some(record) = remains.cgroup_record {
        for (name, pid) in SandboxCgroup::from_record(record).remove(CGROUP_PATIENCE) {
            // Killed by pid above already, when recorded or named.
            if !killed.iter().any(|(_, known)| *known == pid) {
                killed.push((name, pid));
            }
        }
    }
    killed
        .into_iter()
        .map(|(name, pid)| format!("{name} (pid {pid})"))
        .collect()
}

/// The processes of the pids file that still are what it says: a pid may
/// have been reused since.
fn recorded_processes(pids_file: &Path) -> Vec<(String, i32)> {
    let Ok(text) = std::fs::read_to_string(pids_file) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let pid = fields.next()?.parse::<i32>().ok()?;
            let comm = command_name(pid)?;
            // comm is at most 15 bytes: compare prefixes.
            let ours = name.starts_with(&comm) || comm.starts_with("qemu") && name == "qemu";
            ours.then(|| (name.to_owned(), pid))
        })
        .collect()
}

/// Live processes with an argument that is a path below `dir`.
fn processes_naming(dir: &Path) -> Vec<(String, i32)> {
    let mut below = dir.as_os_str().as_encoded_bytes().to_vec();
    below.push(b'/');
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid as u32 != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|byte| *byte == 0)
                    .any(|arg| arg.starts_with(&below))
            })
        })
        .filter_map(|pid| Some((command_name(pid)?, pid)))
        .collect()
}

pub(crate) fn command_name(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim();
    (!comm.is_empty()).then(|| comm.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::Instant;

    fn ended(child: &mut Child) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait().expect("wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn remains<'a>(dir: &'a Path, pids_file: &'a Path) -> Remains<'a> {
        Remains {
            pids_file,
            dir,
            cgroup_record: None,
        }
    }

    #[test]
    fn a_vm_process_started_before_the_pids_file_was_written_is_killed() {
        let pod = tempfile::tempdir().expect("dir");
        let log = pod.path().join("vm/virtiofsd.log");
        std::fs::create_dir(pod.path().join("vm")).expect("mkdir");
        std::fs::write(&log, "").expect("write");
        // Stands in for a helper whose pid never reached the pids file.
        let mut helper = Command::new("tail")
            .args(["-f", "/dev/null"])
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        crate::test_support::wait_until_listed_with(helper.id(), log.as_os_str());
        let mut bystander = Command::new("sleep").arg("60").spawn().expect("spawn");
        let killed = kill_left_behind(remains(pod.path(), &pod.path().join("pids")));
        assert!(ended(&mut helper), "the helper runs on");
        assert_eq!(killed, [format!("tail (pid {})", helper.id())]);
        assert!(bystander.try_wait().expect("wait").is_none());
        bystander.kill().expect("kill");
        bystander.wait().expect("wait");
    }

    #[test]
    fn a_recorded_pid_now_used_by_another_program_is_spared() {
        let pod = tempfile::tempdir().expect("dir");
        let mut other = Command::new("sleep").arg("60").spawn().expect("spawn");
        let pids = pod.path().join("pids");
        std::fs::write(&pids, format!("virtiofsd {}\n", other.id())).expect("write");
        let killed = kill_left_behind(remains(pod.path(), &pids));
        assert!(killed.is_empty(), "{killed:?}");
        assert!(other.try_wait().expect("wait").is_none());
        other.kill().expect("kill");
        other.wait().expect("wait");
    }
}
