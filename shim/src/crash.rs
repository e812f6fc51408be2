//! The cleanup after a shim crash, run by `containerd-shim-hull-v2 delete`:
//! the pod's VM processes are killed, its network undone and its directory
//! unmounted and removed.
//!
//! The processes are found two ways. The pids file names them once the VM
//! has started, but a shim killed while it was still starting them wrote
//! none yet; every VM process carries a path under the pod directory in its
//! arguments (a socket, the jail), so a scan of `/proc` finds those too.

use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pod::remove_pod_dir;
use crate::pod_dir::PodDir;

/// `report` hears of the processes killed ("qemu (pid 42)") as soon as they
/// are, before the slower rest.
pub fn clean_up_after_crash(dir: &Path, report: impl FnOnce(&[String])) {
    let mut victims = recorded_processes(dir);
    for (name, pid) in processes_naming(dir) {
        if !victims.iter().any(|(_, known)| *known == pid) {
            victims.push((name, pid));
        }
    }
    let killed: Vec<String> = victims
        .into_iter()
        .filter(|(_, pid)| kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok())
        .map(|(name, pid)| format!("{name} (pid {pid})"))
        .collect();
    report(&killed);
    if let Ok(netns) = std::fs::read_to_string(PodDir::at(dir).netns()) {
        crate::network::clean_up(Path::new(&netns));
    }
    remove_pod_dir(dir);
}

/// The processes of the pids file that still are what it says: a pid may
/// have been reused since.
fn recorded_processes(dir: &Path) -> Vec<(String, i32)> {
    let Ok(text) = std::fs::read_to_string(PodDir::at(dir).pids()) else {
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

fn command_name(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim();
    (!comm.is_empty()).then(|| comm.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

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

    #[test]
    fn a_vm_process_started_before_the_pids_file_was_written_is_killed() {
        let pod = tempfile::tempdir().expect("dir");
        let layout = PodDir::at(pod.path());
        let log = layout.vm().join("virtiofsd.log");
        std::fs::create_dir(layout.vm()).expect("mkdir");
        std::fs::write(&log, "").expect("write");
        // Stands in for a helper whose pid never reached the pids file.
        let mut helper = Command::new("tail")
            .args(["-f", "/dev/null"])
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let mut bystander = Command::new("sleep").arg("60").spawn().expect("spawn");
        let mut reported = Vec::new();
        clean_up_after_crash(pod.path(), |killed| reported = killed.to_vec());
        assert!(ended(&mut helper), "the helper runs on");
        assert_eq!(reported, [format!("tail (pid {})", helper.id())]);
        assert!(!pod.path().exists(), "the pod directory stays");
        assert!(bystander.try_wait().expect("wait").is_none());
        bystander.kill().expect("kill");
        bystander.wait().expect("wait");
    }

    #[test]
    fn a_recorded_pid_now_used_by_another_program_is_spared() {
        let pod = tempfile::tempdir().expect("dir");
        let mut other = Command::new("sleep").arg("60").spawn().expect("spawn");
        std::fs::write(
            PodDir::at(pod.path()).pids(),
            format!("virtiofsd {}\n", other.id()),
        )
        .expect("write");
        let mut reported = Vec::new();
        clean_up_after_crash(pod.path(), |killed| reported = killed.to_vec());
        assert!(reported.is_empty(), "{reported:?}");
        assert!(other.try_wait().expect("wait").is_none());
        other.kill().expect("kill");
        other.wait().expect("wait");
    }
}
