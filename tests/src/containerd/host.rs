//! What the harness reads off the host: shim processes and their sockets,
//! mounts, cgroups and process trees, and killing them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use super::SHIM_SOCKET_DIR;

/// Processes whose command is a containerd shim started for the containerd
/// at `socket` (their `-address` argument).
pub fn shim_pids(socket: &Path) -> Vec<i32> {
    shims(socket).into_iter().map(|(pid, _)| pid).collect()
}

/// The shims of the containerd at `socket`, each with the socket it serves
/// on: containerd 1.6 puts it at /run/containerd/s/HEX, HEX being the
/// SHA-256 of `ADDRESS/NAMESPACE/ID` from the shim's arguments.
pub(super) fn shims(socket: &Path) -> Vec<(i32, Option<PathBuf>)> {
    let address = socket.as_os_str().as_encoded_bytes();
    let mut shims = Vec::new();
    for (pid, cmdline) in processes() {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|arg0| {
            arg0.rsplit(|b| *b == b'/')
                .next()
                .is_some_and(|name| name.starts_with(b"containerd-shim"))
        });
        let flag = |name: &[u8]| {
            args.windows(2)
                .find(|pair| pair[0] == name)
                .map(|pair| pair[1])
        };
        if !is_shim || flag(b"-address") != Some(address) {
            continue;
        }
        let shim_socket = flag(b"-namespace")
            .zip(flag(b"-id"))
            .map(|(ns, id)| shim_socket_of(address, ns, id));
        shims.push((pid, shim_socket));
    }
    shims
}

/// Where containerd 1.6 has the shim for task `id` in `namespace` of the
/// containerd at `address` listen: /run/containerd/s/HEX, HEX being the
/// SHA-256 of `ADDRESS/NAMESPACE/ID`.
pub fn shim_socket_of(address: &[u8], namespace: &[u8], id: &[u8]) -> PathBuf {
    let mut key = address.to_vec();
    for part in [namespace, id] {
        key.push(b'/');
        key.extend_from_slice(part);
    }
    let digest = Sha256::digest(&key);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    PathBuf::from(SHIM_SOCKET_DIR).join(hex)
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_mountinfo(escaped)))
        .filter(|point| point.starts_with(dir))
        .collect();
    // Later mounts may stack on earlier ones: unmount in reverse order,
    // children (longer paths) before parents.
    mounts.reverse();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    mounts
}

/// Unmounts everything under `dir`, lazily when a mount is busy.
pub fn unmount_all_under(dir: &Path) {
    use nix::mount::{MntFlags, umount2};
    for _ in 0..10 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for point in mounts {
            if umount2(&point, MntFlags::empty()).is_err() {
                let _ = umount2(&point, MntFlags::MNT_DETACH);
            }
        }
    }
}

/// `\040`-style escapes in /proc/self/mountinfo paths.
pub(super) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(code) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .map_err(|_| ())
                .and_then(|digits| u8::from_str_radix(digits, 8).map_err(|_| ()))
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The task bundles under `state`: namespace, id, and the shim socket
/// (outside our directory, under /run/containerd/s) that its `address` file
/// names.
pub(super) fn task_bundles(state: &Path) -> Vec<(String, String, Option<PathBuf>)> {
    let tasks = state.join("io.containerd.runtime.v2.task");
    let mut bundles = Vec::new();
    for namespace in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        for bundle in std::fs::read_dir(namespace.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let socket = std::fs::read_to_string(bundle.path().join("address"))
                .ok()
                .map(|address| PathBuf::from(address.trim().trim_start_matches("unix://")))
                .filter(|path| path.starts_with(SHIM_SOCKET_DIR));
            bundles.push((
                namespace.file_name().to_string_lossy().into_owned(),
                bundle.file_name().to_string_lossy().into_owned(),
                socket,
            ));
        }
    }
    bundles
}

/// The cgroup directories (every hierarchy) that `pids` are in, deepest
/// first, leaving out the root and the cgroups the test itself is in.
pub(super) fn task_cgroups(pids: &[i32]) -> Vec<PathBuf> {
    let own: Vec<PathBuf> = cgroup_dirs(std::process::id() as i32);
    let mut dirs: Vec<PathBuf> = pids
        .iter()
        .flat_map(|&pid| cgroup_dirs(pid))
        .filter(|dir| !own.contains(dir))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
    dirs
}

/// Removes the (now empty) cgroup directories `dirs`, deepest first,
/// retrying for a moment while the killed tasks finish exiting.
pub(super) fn remove_cgroups(dirs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
        if dirs.iter().all(|dir| !dir.exists()) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where process `pid`'s cgroups are in /sys/fs/cgroup, for cgroup v1
/// hierarchies and the unified one alike, leaving out root cgroups.
pub fn cgroup_dirs(pid: i32) -> Vec<PathBuf> {
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let mounts = cgroup_mounts();
    let mut dirs = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path == "/" {
            continue;
        }
        let mount = mounts.iter().find(|(fstype, options, _)| {
            if controllers.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| options.split(',').any(|option| option == c))
            }
        });
        if let Some((_, _, point)) = mount {
            dirs.push(point.join(path.trim_start_matches('/')));
        }
    }
    dirs
}

/// The cgroup file systems: type, super options, mount point.
pub(super) fn cgroup_mounts() -> Vec<(String, String, PathBuf)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let options = after.nth(1)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| {
                (
                    fstype.to_owned(),
                    options.to_owned(),
                    PathBuf::from(unescape_mountinfo(point)),
                )
            })
        })
        .collect()
}

/// Every live process: pid and raw command line.
pub fn processes() -> Vec<(i32, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            out.push((pid, cmdline));
        }
    }
    out
}

/// A process's state letter from /proc/PID/stat, `None` when it is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().next()?.chars().next()
}

pub(super) fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and all their descendants, roots first.
pub(super) fn process_trees(roots: &[i32]) -> Vec<i32> {
    let all: Vec<i32> = processes().into_iter().map(|(pid, _)| pid).collect();
    let mut tree: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &pid in &all {
            if parent_pid(pid) == Some(parent) && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        i += 1;
    }
    tree
}

/// SIGKILLs `pids` in order (shims first, so none reacts to its container
/// dying) and waits, a few seconds at most, until they are gone or zombies.
pub fn kill_all(pids: &[i32]) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|&pid| !matches!(process_state(pid), None | Some('Z')))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}
