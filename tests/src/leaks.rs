//! A leak check for pod create/delete cycles: a [`Snapshot`] of everything
//! a hull pod puts on the host, taken before and after the cycles, and a
//! [`Leaks`] diff that names every item left over.
//!
//! What it counts, each scoped to one harness containerd and one Hull state
//! directory so that other containerds and VMs on the machine (the suites
//! run side by side) never count:
//!
//! - processes: the containerd's shims and children, processes whose command
//!   line names its directory or the Hull state directory (VMMs, virtiofsd,
//!   vhost-device-vsock), and their descendants, zombies included;
//! - mounts under the containerd directory and the state directory;
//! - shim sockets: /run/containerd/s/HEX of every task [`Scope::track`]ed;
//! - taps: `*_hull` links on the host and in any network namespace still
//!   mounted under the containerd directory, and the CNI bridge's ports;
//! - cgroups (every hierarchy) named after a tracked task;
//! - memfds held by any of those processes, containerd or this process;
//! - files under the state directory and containerd's root, state and
//!   FIFO directories;
//! - containerd's open descriptors, by kind (socket, pipe, ...): these
//!   churn, so only a kind that grew counts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::containerd::{self, Containerd};

/// What a snapshot counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Processes,
    Mounts,
    ShimSockets,
    Taps,
    Cgroups,
    Memfds,
    StateFiles,
    ContainerdFds,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Processes,
        Kind::Mounts,
        Kind::ShimSockets,
        Kind::Taps,
        Kind::Cgroups,
        Kind::Memfds,
        Kind::StateFiles,
        Kind::ContainerdFds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Processes => "processes",
            Kind::Mounts => "mounts",
            Kind::ShimSockets => "shim sockets",
            Kind::Taps => "taps",
            Kind::Cgroups => "cgroups",
            Kind::Memfds => "memfds",
            Kind::StateFiles => "state files",
            Kind::ContainerdFds => "containerd fds",
        }
    }
}

/// Which containerd and Hull state directory a snapshot looks at, and the
/// tasks whose shim sockets and cgroups it looks for.
#[derive(Debug, Clone)]
pub struct Scope {
    address: PathBuf,
    containerd_dir: PathBuf,
    containerd_pid: i32,
    bridge: Option<String>,
    state_dir: PathBuf,
    /// (namespace, id) of every task or sandbox the cycles created.
    tasks: BTreeSet<(String, String)>,
}

impl Scope {
    pub fn new(containerd: &Containerd, state_dir: &Path) -> Self {
        Self {
            address: containerd.socket().to_owned(),
            containerd_dir: containerd.dir().to_owned(),
            containerd_pid: containerd.pid() as i32,
            bridge: containerd.cni_bridge().map(str::to_owned),
            state_dir: state_dir.to_owned(),
            tasks: BTreeSet::new(),
        }
    }

    /// Makes containerd run a garbage collection and wait for it: deleting
    /// a fresh lease with `--sync` does, in every namespace's metadata.
    pub fn collect_garbage(&self) {
        let ctr = |args: &[&str]| {
            std::process::Command::new("ctr")
                .arg("--address")
                .arg(&self.address)
                .args(["-n", "k8s.io"])
                .args(args)
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        };
        if let Some(created) = ctr(&["leases", "create"]) {
            // "Created lease with ID ..."
            if let Some(id) = created.split_whitespace().last() {
                let _ = ctr(&["leases", "delete", "--sync", id]);
            }
        }
    }

    /// Looks for the shim socket and cgroups of task (or sandbox) `id` in
    /// containerd namespace `namespace` from now on.
    pub fn track(&mut self, namespace: &str, id: &str) {
        self.tasks.insert((namespace.to_owned(), id.to_owned()));
    }

    /// Tracks the task of every shim of this containerd running now: a pod
    /// whose RunPodSandbox failed never told the caller its id.
    pub fn track_running_shims(&mut self) {
        let address = self.address.display().to_string();
        for (_, (_, cmdline)) in process_table() {
            let args: Vec<&str> = cmdline.split(' ').collect();
            let flag = |name: &str| {
                args.windows(2)
                    .find(|pair| pair[0] == name)
                    .map(|pair| pair[1].to_owned())
            };
            if flag("-address").as_deref() != Some(&*address) {
                continue;
            }
            if let (Some(namespace), Some(id)) = (flag("-namespace"), flag("-id")) {
                self.tasks.insert((namespace, id));
            }
        }
    }
}

/// Everything of [`Kind`] found at one moment; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub items: BTreeMap<Kind, BTreeSet<String>>,
}

impl Snapshot {
    pub fn take(scope: &Scope) -> Self {
        let mut items: BTreeMap<Kind, BTreeSet<String>> = Kind::ALL
            .iter()
            .map(|&kind| (kind, BTreeSet::new()))
            .collect();
        let mut add = |kind: Kind, item: String| {
            items.get_mut(&kind).expect("every kind").insert(item);
        };
        let table = process_table();
        let pids = hull_processes(scope, &table);
        for &pid in &pids {
            let (state, cmdline) = &table[&pid];
            add(Kind::Processes, format!("pid {pid} ({state}): {cmdline}"));
        }
        for dir in [&scope.containerd_dir, &scope.state_dir] {
            for mount in containerd::mounts_under(dir) {
                add(Kind::Mounts, mount.display().to_string());
            }
        }
        let address = scope.address.as_os_str().as_encoded_bytes();
        for (namespace, id) in &scope.tasks {
            let socket = containerd::shim_socket_of(address, namespace.as_bytes(), id.as_bytes());
            if socket.exists() {
                add(
                    Kind::ShimSockets,
                    format!("{} ({namespace}/{id})", socket.display()),
                );
            }
        }
        for tap in taps(scope) {
            add(Kind::Taps, tap);
        }
        for cgroup in cgroups(scope) {
            add(Kind::Cgroups, cgroup);
        }
        let holders = pids
            .iter()
            .copied()
            .chain([scope.containerd_pid, std::process::id() as i32]);
        for pid in holders {
            for (fd, target) in descriptors(pid) {
                if target.starts_with("/memfd:") || target.starts_with("memfd:") {
                    add(Kind::Memfds, format!("pid {pid} fd {fd}: {target}"));
                }
            }
        }
        let state = &scope.containerd_dir;
        for dir in [
            scope.state_dir.clone(),
            state.join("root"),
            state.join("state"),
            // `ctr run`'s I/O FIFOs (Containerd::ctr_run).
            state.join("fifo"),
        ] {
            for file in files_under(&dir) {
                add(Kind::StateFiles, file.display().to_string());
            }
        }
        for (fd, target) in descriptors(scope.containerd_pid) {
            add(Kind::ContainerdFds, format!("fd {fd}: {target}"));
        }
        Self { items }
    }

    /// How many items of each kind.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        self.items
            .iter()
            .map(|(&kind, items)| (kind, items.len()))
            .collect()
    }

    /// What `self` has that `baseline` did not: every new item, except for
    /// containerd's descriptors, which churn (a gRPC connection closes,
    /// another opens) and count only as far as a kind grew.
    pub fn leaks_since(&self, baseline: &Snapshot) -> Leaks {
        let empty = BTreeSet::new();
        let mut leaks = Vec::new();
        for kind in Kind::ALL {
            let now = self.items.get(&kind).unwrap_or(&empty);
            let before = baseline.items.get(&kind).unwrap_or(&empty);
            if kind == Kind::ContainerdFds {
                let (now_kinds, before_kinds) = (fd_kinds(now), fd_kinds(before));
                for (fd_kind, count) in &now_kinds {
                    let was = before_kinds.get(fd_kind).copied().unwrap_or(0);
                    if *count > was {
                        let new: Vec<&str> = now
                            .difference(before)
                            .filter(|item| fd_kind_of(item) == *fd_kind)
                            .map(String::as_str)
                            .collect();
                        leaks.push((
                            kind,
                            format!("{fd_kind}: {was} -> {count} (new: {})", new.join(", ")),
                        ));
                    }
                }
            } else {
                leaks.extend(now.difference(before).map(|item| (kind, item.clone())));
            }
        }
        Leaks { items: leaks }
    }
}

/// What a [`Snapshot`] found that its baseline did not, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leaks {
    pub items: Vec<(Kind, String)>,
}

impl Leaks {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many leaked items of each kind, every kind listed.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut counts: BTreeMap<Kind, usize> = Kind::ALL.iter().map(|&kind| (kind, 0)).collect();
        for (kind, _) in &self.items {
            *counts.get_mut(kind).expect("every kind") += 1;
        }
        counts
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return write!(f, "no leaks");
        }
        for (kind, item) in &self.items {
            writeln!(f, "{}: {item}", kind.name())?;
        }
        Ok(())
    }
}

/// Snapshots until nothing has leaked since `baseline` or `patience` has
/// passed (a deleted pod's processes take a moment to go); returns the last
/// diff.
pub fn wait_for_no_leaks(scope: &Scope, baseline: &Snapshot, patience: Duration) -> Leaks {
    let deadline = Instant::now() + patience;
    let mut last_collection = Instant::now();
    loop {
        let leaks = Snapshot::take(scope).leaks_since(baseline);
        if leaks.is_empty() || Instant::now() >= deadline {
            return leaks;
        }
        // containerd removes a deleted snapshot's directory in its garbage
        // collection, which only runs after further deletions and retries
        // a directory it could not remove then (still mounted by a shim
        // that had not unmounted yet). Collecting now tells such a
        // directory from a snapshot containerd still holds.
        if last_collection.elapsed() >= Duration::from_secs(5) {
            scope.collect_garbage();
            last_collection = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every process: pid → (state letter, command line with spaces).
fn process_table() -> BTreeMap<i32, (char, String)> {
    let mut table = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Some(state) = containerd::process_state(pid) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline)
            .trim_end_matches('\0')
            .replace('\0', " ");
        table.insert(pid, (state, cmdline));
    }
    table
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// The processes of the scope (containerd itself left out) and all their
/// descendants.
fn hull_processes(scope: &Scope, table: &BTreeMap<i32, (char, String)>) -> BTreeSet<i32> {
    let markers = [
        scope.containerd_dir.display().to_string(),
        scope.state_dir.display().to_string(),
    ];
    let this = std::process::id() as i32;
    let parents: BTreeMap<i32, i32> = table
        .keys()
        .filter_map(|&pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found: BTreeSet<i32> = table
        .iter()
        .filter(|(pid, (_, cmdline))| {
            **pid != scope.containerd_pid
                && **pid != this
                && markers.iter().any(|marker| cmdline.contains(marker))
        })
        .map(|(&pid, _)| pid)
        .collect();
    found.extend(
        parents
            .iter()
            .filter(|(_, parent)| **parent == scope.containerd_pid)
            .map(|(&pid, _)| pid),
    );
    // Descendants, to a fixed point.
    loop {
        let more: Vec<i32> = parents
            .iter()
            .filter(|(pid, parent)| found.contains(parent) && !found.contains(pid))
            .map(|(&pid, _)| pid)
            .collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

/// A process's open descriptors: number and link target.
fn descriptors(pid: i32) -> Vec<(u32, String)> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            fds.push((fd, target.display().to_string()));
        }
    }
    fds
}

/// "fd N: socket:[123]" → "socket"; "fd N: /a/b" → "/a/b".
fn fd_kind_of(item: &str) -> &str {
    let target = item.split_once(": ").map_or(item, |(_, target)| target);
    match target.find(":[") {
        Some(at) if !target.starts_with('/') => &target[..at],
        _ => target,
    }
}

fn fd_kinds(items: &BTreeSet<String>) -> BTreeMap<&str, usize> {
    let mut kinds = BTreeMap::new();
    for item in items {
        *kinds.entry(fd_kind_of(item)).or_insert(0) += 1;
    }
    kinds
}

/// `*_hull` links in the host's namespace and in every network namespace
/// mounted under the containerd directory, and the CNI bridge's ports.
fn taps(scope: &Scope) -> Vec<String> {
    let mut taps: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with("_hull"))
        .map(|name| format!("host: {name}"))
        .collect();
    for netns in containerd::mounts_under(&scope.containerd_dir)
        .into_iter()
        .filter(|point| point.to_string_lossy().contains("netns"))
    {
        let output = std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["ip", "-o", "link", "show"])
            .output();
        let links = output
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        for link in links.lines().filter_map(|line| line.split(": ").nth(1)) {
            let name = link.split('@').next().unwrap_or(link);
            if name.ends_with("_hull") {
                taps.push(format!("{}: {name}", netns.display()));
            }
        }
    }
    if let Some(bridge) = &scope.bridge {
        for port in std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
            .into_iter()
            .flatten()
            .flatten()
        {
            taps.push(format!(
                "bridge {bridge} port {}",
                port.file_name().to_string_lossy()
            ));
        }
    }
    taps
}

/// Cgroup directories, in every hierarchy, named after a tracked task. Not
/// after its namespace: /sys/fs/cgroup/*/k8s.io is every containerd's on
/// the machine.
fn cgroups(scope: &Scope) -> Vec<String> {
    let names: BTreeSet<&str> = scope.tasks.iter().map(|(_, id)| id.as_str()).collect();
    if names.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = cgroup_roots();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if names.iter().any(|wanted| name.contains(wanted)) {
                found.push(entry.path().display().to_string());
            }
            stack.push(entry.path());
        }
    }
    found.sort();
    found
}

fn cgroup_roots() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            let point = before.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Every file and directory under `dir`, not descending into other file
/// systems (a pod's rootfs mount, a network namespace) and leaving out
/// containerd's log, which only ever grows.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            files.push(path.clone());
            if let Ok(meta) = std::fs::symlink_metadata(&path)
                && meta.is_dir()
                && meta.dev() == top.dev()
            {
                stack.push(path);
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(kind: Kind, items: &[&str]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot
            .items
            .insert(kind, items.iter().map(|s| s.to_string()).collect());
        snapshot
    }

    #[test]
    fn new_items_are_leaks_and_gone_ones_are_not() {
        let before = snapshot(Kind::Mounts, &["/a", "/b"]);
        let after = snapshot(Kind::Mounts, &["/b", "/c"]);
        assert_eq!(
            after.leaks_since(&before).items,
            [(Kind::Mounts, "/c".to_owned())]
        );
        assert!(before.leaks_since(&before).is_empty());
    }

    #[test]
    fn containerd_descriptors_leak_only_when_a_kind_grows() {
        let before = snapshot(Kind::ContainerdFds, &["fd 3: socket:[1]", "fd 4: pipe:[2]"]);
        let churned = snapshot(Kind::ContainerdFds, &["fd 3: socket:[9]", "fd 4: pipe:[2]"]);
        assert!(churned.leaks_since(&before).is_empty());
        let grown = snapshot(
            Kind::ContainerdFds,
            &["fd 3: socket:[1]", "fd 4: pipe:[2]", "fd 5: socket:[7]"],
        );
        let leaks = grown.leaks_since(&before);
        assert_eq!(leaks.counts()[&Kind::ContainerdFds], 1, "{leaks}");
        assert!(leaks.to_string().contains("socket: 1 -> 2"), "{leaks}");
    }
}
