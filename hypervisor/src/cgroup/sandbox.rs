//! Creating the sandbox's cgroup, moving a process into it and out again,
//! and removing it with whatever was left in it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{CgroupError, Hierarchy};

/// The v2 controllers enabled on the way down, where the parent has them.
const V2_CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];
/// Between attempts to remove a cgroup whose last processes are exiting.
const REMOVE_RETRY: Duration = Duration::from_millis(20);

/// The sandbox's cgroup in every hierarchy that accounts; see the module
/// documentation of [`crate::cgroup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCgroup {
    hierarchies: Vec<Hierarchy>,
    /// The sandbox's directory in each hierarchy, in the same order.
    leaves: Vec<PathBuf>,
    /// Directories above the leaves that did not exist and are created
    /// with them, deepest first: removed with them when nothing else
    /// moved in meanwhile.
    parents: Vec<PathBuf>,
}

/// The cgroups a process left for the sandbox's, to go back to.
#[derive(Debug)]
pub struct Joined {
    origins: Vec<PathBuf>,
}

impl SandboxCgroup {
    /// The sandbox's cgroup at `relative` (see [`super::resolve`]) in each
    /// of `hierarchies`; nothing is created yet.
    pub fn new(hierarchies: Vec<Hierarchy>, relative: &Path) -> Self {
        let leaves: Vec<PathBuf> = hierarchies.iter().map(|h| h.root.join(relative)).collect();
        let mut parents: Vec<PathBuf> = leaves
            .iter()
            .zip(&hierarchies)
            .flat_map(|(leaf, h)| {
                leaf.ancestors()
                    .skip(1)
                    .take_while(|dir| *dir != h.root)
                    .filter(|dir| !dir.exists())
                    .map(Path::to_path_buf)
                    .collect::<Vec<_>>()
            })
            .collect();
        parents.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
        Self {
            hierarchies,
            leaves,
            parents,
        }
    }

    /// The sandbox's cgroup for the spec's `linux.cgroupsPath`, on this
    /// host.
    pub fn for_spec(cgroups_path: &str) -> Result<Self, CgroupError> {
        let relative = super::resolve(cgroups_path)?;
        Ok(Self::new(super::host_hierarchies()?, &relative))
    }

    /// The sandbox's directory in each hierarchy.
    pub fn leaves(&self) -> &[PathBuf] {
        &self.leaves
    }

    /// What [`Self::from_record`] needs to remove it: written before
    /// [`Self::create`], so that a cleanup after a crash finds it.
    pub fn record(&self) -> String {
        let leaves = self.leaves.iter().map(|dir| ("leaf", dir));
        let parents = self.parents.iter().map(|dir| ("parent", dir));
        leaves
            .chain(parents)
            .map(|(kind, dir)| format!("{kind} {}\n", dir.display()))
            .collect()
    }

    /// The cgroup a [`Self::record`] describes, for [`Self::remove`] only.
    pub fn from_record(text: &str) -> Self {
        let mut cgroup = Self {
            hierarchies: Vec::new(),
            leaves: Vec::new(),
            parents: Vec::new(),
        };
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("leaf", dir)) => cgroup.leaves.push(dir.into()),
                Some(("parent", dir)) => cgroup.parents.push(dir.into()),
                _ => {}
            }
        }
        cgroup
    }

    /// Creates the directories, missing parents included. A v1 cpuset
    /// cgroup starts with no CPUs and no memory nodes, where no process
    /// can go: it gets its parent's. On v2 the accounting controllers are
    /// enabled on the way down where the parent has them.
    pub fn create(&self) -> Result<(), CgroupError> {
        for (hierarchy, leaf) in self.hierarchies.iter().zip(&self.leaves) {
            // A parent another sandbox created may go (its removal) while
            // this one walks down: then the walk starts over.
            let mut attempts = 0;
            loop {
                attempts += 1;
                match create_below(hierarchy, leaf) {
                    Err(CgroupError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {}
                    other => break other?,
                }
            }
        }
        Ok(())
    }

    /// Puts process `pid` (all its threads) in the sandbox's cgroup in
    /// every hierarchy.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for leaf in &self.leaves {
            write_pid(leaf, pid)?;
        }
        Ok(())
    }

    /// Moves this process into the sandbox's cgroup; every process it
    /// starts afterwards starts there. [`Joined::leave`] moves it back.
    pub fn join(&self) -> Result<Joined, CgroupError> {
        let own = Path::new("/proc/self/cgroup");
        let text = std::fs::read_to_string(own).map_err(CgroupError::io(own, "reading"))?;
        let origins: Vec<PathBuf> = self
            .hierarchies
            .iter()
            .map(|h| h.cgroup_of(&text).unwrap_or_else(|| h.root.clone()))
            .collect();
        let joined = Joined { origins };
        if let Err(err) = self.add_process(std::process::id()) {
            joined.leave();
            return Err(err);
        }
        Ok(joined)
    }

    /// Kills whatever is still in the sandbox's cgroup (never this
    /// process), then removes its directories, waiting up to `patience`
    /// for the last processes to go. Returns what it killed (name, pid).
    /// Parents created for it go too unless another cgroup moved in
    /// meanwhile. Failures are logged: this runs where nobody is left to
    /// tell.
    pub fn remove(&self, patience: Duration) -> Vec<(String, i32)> {
        let deadline = Instant::now() + patience;
        let own = std::process::id() as i32;
        let mut killed: Vec<(String, i32)> = Vec::new();
        for leaf in &self.leaves {
            loop {
                for pid in pids_in(leaf).into_iter().filter(|pid| *pid != own) {
                    let name = crate::leftovers::command_name(pid).unwrap_or_default();
                    if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
                        && !killed.iter().any(|(_, known)| *known == pid)
                    {
                        killed.push((name, pid));
                    }
                }
                match std::fs::remove_dir(leaf) {
                    Ok(()) => break,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
                    // Busy while a killed process is still exiting.
                    Err(err) if Instant::now() < deadline => {
                        tracing::trace!(%err, dir = %leaf.display(), "cgroup still busy");
                        std::thread::sleep(REMOVE_RETRY);
                    }
                    Err(err) => {
                        tracing::warn!(%err, dir = %leaf.display(), "removing the sandbox's cgroup");
                        break;
                    }
                }
            }
        }
        for parent in &self.parents {
            // Busy when another sandbox's cgroup is below it now: theirs.
            if let Err(err) = std::fs::remove_dir(parent)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::debug!(%err, dir = %parent.display(), "keeping a shared parent cgroup");
            }
        }
        killed
    }
}

impl Joined {
    /// Moves this process back to the cgroups it came from, so that the
    /// sandbox's cgroup can be removed. Failures are logged: the cgroup's
    /// removal then fails and says so too.
    pub fn leave(&self) {
        for origin in &self.origins {
            if let Err(err) = write_pid(origin, std::process::id()) {
                tracing::warn!(%err, "leaving the sandbox's cgroup");
            }
        }
    }
}

/// Creates `leaf`, and the missing levels above it, in `hierarchy`.
fn create_below(hierarchy: &Hierarchy, leaf: &Path) -> Result<(), CgroupError> {
    let relative = leaf.strip_prefix(&hierarchy.root).unwrap_or(leaf);
    let mut dir = hierarchy.root.clone();
    for component in relative.components() {
        let parent = dir.clone();
        dir.push(component);
        if dir.is_dir() {
            continue;
        }
        if hierarchy.is_v2() {
            enable_v2_controllers(&parent);
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(CgroupError::io(&dir, "creating")(err)),
        }
        if hierarchy.controllers.iter().any(|c| c == "cpuset") {
            inherit_cpuset(&parent, &dir)?;
        }
    }
    Ok(())
}

fn write_pid(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .map_err(CgroupError::io(dir, "moving a process into it"))
}

fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if !own.trim().is_empty() {
            continue;
        }
        let inherited = std::fs::read_to_string(parent.join(file))
            .map_err(CgroupError::io(parent, "reading cpuset.cpus/mems"))?;
        std::fs::write(dir.join(file), inherited.trim())
            .map_err(CgroupError::io(dir, "setting cpuset.cpus/mems"))?;
    }
    Ok(())
}

/// Best effort: a parent with processes of its own cannot delegate
/// controllers (v2's no-internal-processes rule), and the kubelet's pod
/// cgroup has them enabled already.
fn enable_v2_controllers(parent: &Path) {
    let available = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    for controller in available
        .split_whitespace()
        .filter(|c| V2_CONTROLLERS.contains(c))
    {
        if let Err(err) = std::fs::write(
            parent.join("cgroup.subtree_control"),
            format!("+{controller}"),
        ) {
            tracing::debug!(%err, controller, dir = %parent.display(), "enabling a controller");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hierarchy(root: &Path, controllers: &[&str]) -> Hierarchy {
        Hierarchy {
            root: root.to_owned(),
            controllers: controllers.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn the_leaf_and_missing_parents_are_planned_and_recorded() {
        let root = tempfile::tempdir().expect("dir");
        let memory = root.path().join("memory");
        let pids = root.path().join("pids");
        std::fs::create_dir_all(memory.join("kubepods")).expect("mkdir");
        std::fs::create_dir_all(&pids).expect("mkdir");
        let cgroup = SandboxCgroup::new(
            vec![hierarchy(&memory, &["memory"]), hierarchy(&pids, &["pids"])],
            Path::new("kubepods/pod1/abc"),
        );
        assert_eq!(
            cgroup.leaves(),
            [
                memory.join("kubepods/pod1/abc"),
                pids.join("kubepods/pod1/abc")
            ]
        );
        let record = cgroup.record();
        assert_eq!(
            record,
            format!(
                "leaf {m}/kubepods/pod1/abc\nleaf {p}/kubepods/pod1/abc\nparent {m}/kubepods/pod1\nparent {p}/kubepods/pod1\nparent {p}/kubepods\n",
                m = memory.display(),
                p = pids.display()
            )
        );
        let read = SandboxCgroup::from_record(&record);
        assert_eq!((read.leaves, read.parents), (cgroup.leaves, cgroup.parents));
    }

    #[test]
    fn created_directories_go_and_a_shared_parent_stays() {
        // Plain directories stand in for a hierarchy: creating and removing
        // work the same, without root.
        let root = tempfile::tempdir().expect("dir");
        let cgroup = SandboxCgroup::new(
            vec![hierarchy(root.path(), &["memory"])],
            Path::new("pod/abc"),
        );
        cgroup.create().expect("create");
        assert!(root.path().join("pod/abc").is_dir());
        std::fs::create_dir(root.path().join("pod/other")).expect("another sandbox");
        assert!(cgroup.remove(Duration::from_millis(100)).is_empty());
        assert!(!root.path().join("pod/abc").exists());
        assert!(root.path().join("pod/other").is_dir(), "a sibling went");
    }
}
