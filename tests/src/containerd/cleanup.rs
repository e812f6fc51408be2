//! Cleaning up after a harness containerd: when one is dropped, and after
//! one whose test process died without dropping it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::host::{
    kill_all, process_state, process_trees, processes, remove_cgroups, shims, task_bundles,
    task_cgroups, unmount_all_under,
};
use super::{CONTAINERD, DEFAULT_RUNC_ROOT, DIR_PREFIX, OWNER_FILE, Paths};

/// With containerd gone, so that nothing restarts or waits for the shims:
/// kills its shims and their containers, removes their cgroups, runc state
/// and sockets, deletes the CNI bridge, and unmounts everything under its
/// directory (which the caller then removes).
pub(super) fn clean_up_after(paths: &Paths, bridge: Option<&str>) {
    let shims = shims(&paths.socket);
    let shim_pids: Vec<i32> = shims.iter().map(|(pid, _)| *pid).collect();
    let victims = process_trees(&shim_pids);
    let cgroups = task_cgroups(&victims);
    kill_all(&victims);
    remove_cgroups(&cgroups);
    let bundles = task_bundles(&paths.state);
    for (namespace, id, _) in &bundles {
        // Where a plain `ctr run` keeps runc's state.
        let _ = std::fs::remove_dir_all(Path::new(DEFAULT_RUNC_ROOT).join(namespace).join(id));
    }
    // A killed shim leaves its socket behind.
    let shim_sockets = bundles
        .into_iter()
        .filter_map(|(_, _, socket)| socket)
        .chain(shims.into_iter().filter_map(|(_, socket)| socket));
    for socket in shim_sockets {
        let _ = std::fs::remove_file(socket);
    }
    if let Some(bridge) = bridge {
        // Gone already if CNI deleted it; otherwise it outlives pods.
        let _ = Command::new("ip")
            .args(["link", "del", bridge])
            .stderr(Stdio::null())
            .status();
    }
    unmount_all_under(&paths.dir);
}

/// Cleans up after harness containerds whose test process died without
/// dropping them (killed, or aborted): their directory's `owner.pid` names
/// a process that is gone. Called by every start.
pub fn clean_up_stale() {
    for entry in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner: Option<i32> = std::fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse().ok());
        let stale = match owner {
            Some(pid) => matches!(process_state(pid), None | Some('Z')),
            // Being set up right now, or from a harness that died then.
            None => entry
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| {
                    modified.elapsed().unwrap_or_default() > Duration::from_secs(60)
                }),
        };
        if !stale {
            continue;
        }
        eprintln!("containerd harness: cleaning up stale {}", dir.display());
        let paths = Paths::new(&dir);
        let config = paths.dir.join("config.toml");
        let config = config.as_os_str().as_encoded_bytes();
        for (pid, cmdline) in processes() {
            let mut args = cmdline.split(|b| *b == 0);
            if args.next() == Some(CONTAINERD.as_bytes()) && args.any(|arg| arg == config) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                while !matches!(process_state(pid), None | Some('Z')) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        clean_up_after(&paths, Some(&bridge_name(&dir)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The CNI bridge of the harness directory `dir`; interface names have at
/// most 15 bytes.
pub(super) fn bridge_name(dir: &Path) -> String {
    let name = dir.file_name().expect("temp dir name").to_string_lossy();
    format!("hct{}", name.trim_start_matches(DIR_PREFIX))
}
