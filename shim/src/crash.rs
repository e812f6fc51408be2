//! The cleanup after a shim crash, run by `containerd-shim-hull-v2 delete`:
//! the pod's VM processes are killed and its cgroup removed (both by
//! [`hull_hypervisor::leftovers`], which knows what a VM leaves), its
//! network undone and its directory unmounted and removed.

use std::path::Path;

use hull_hypervisor::leftovers::{Remains, kill_left_behind};

use crate::pod::remove_pod_dir;
use crate::pod_dir::PodDir;

/// `report` hears of the processes killed ("qemu (pid 42)") as soon as they
/// are, before the slower rest.
pub fn clean_up_after_crash(dir: &Path, report: impl FnOnce(&[String])) {
    let cgroup_record = std::fs::read_to_string(PodDir::at(dir).cgroup()).ok();
    let killed = kill_left_behind(Remains {
        pids_file: &PodDir::at(dir).pids(),
        dir,
        cgroup_record: cgroup_record.as_deref(),
    });
    report(&killed);
    if let Ok(netns) = std::fs::read_to_string(PodDir::at(dir).netns()) {
        crate::network::clean_up(Path::new(&netns));
    }
    remove_pod_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn the_vm_processes_are_killed_and_the_pod_directory_goes() {
        let pod = tempfile::tempdir().expect("dir");
        let layout = PodDir::at(pod.path());
        let log = layout.vm().join("virtiofsd.log");
        std::fs::create_dir(layout.vm()).expect("mkdir");
        std::fs::write(&log, "").expect("write");
        let mut helper = Command::new("tail")
            .args(["-f", "/dev/null"])
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        hull_hypervisor::test_support::wait_until_listed_with(helper.id(), log.as_os_str());
        let mut reported = Vec::new();
        clean_up_after_crash(pod.path(), |killed| reported = killed.to_vec());
        assert_eq!(reported, [format!("tail (pid {})", helper.id())]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while helper.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "the helper runs on");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!pod.path().exists(), "the pod directory stays");
    }
}
