//! The pod's cgroup on the host, so that the kubelet's pod limits,
//! accounting and eviction see the VM (Kata calls this
//! `sandbox_cgroup_only`).
//!
//! The kubelet creates the pod's cgroup, with the pod's limits plus the
//! RuntimeClass overhead, before RunPodSandbox; the sandbox spec's
//! `linux.cgroupsPath` names a cgroup below it ([`path::resolve`] reads
//! both the cgroupfs and the systemd form). [`SandboxCgroup`] creates that
//! cgroup in every hierarchy that accounts for something (cgroup v1:
//! memory, cpu, cpuacct, pids, cpuset, blkio; cgroup v2: the one unified
//! directory), puts a process in it, and removes it again, killing what is
//! left in it first.
//!
//! Left out on purpose:
//! - v1 `devices`: the pod's cgroup there is the kubelet's, and a
//!   restrictive device list in it would take /dev/kvm, /dev/net/tun and
//!   /dev/vhost-vsock from the VMM; the VMM's device reach is its jail's
//!   business, not the accounting's.
//! - v1 `freezer`, `net_cls` and the like: they account for nothing.
//! - the controller-less cgroup2 of a hybrid host (/sys/fs/cgroup/unified):
//!   it only tracks processes for systemd.

mod limits;
pub mod path;
mod sandbox;

pub use limits::PodLimits;
pub use path::resolve;
pub use sandbox::{Joined, SandboxCgroup};

use std::path::{Path, PathBuf};

/// What creating, joining or removing the sandbox's cgroup fails with.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The spec's cgroups path cannot name a sandbox cgroup.
    #[error("linux.cgroupsPath: {path:?} {reason}")]
    BadPath { path: String, reason: String },

    #[error("no cgroup hierarchy with a controller that accounts is mounted")]
    NoHierarchy,

    #[error("cgroup {}: {what}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl CgroupError {
    fn io(dir: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let dir = dir.to_owned();
        move |source| Self::Io { dir, what, source }
    }
}

/// The v1 controllers whose hierarchies the sandbox joins.
pub const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "cpuset", "blkio"];

/// One mounted hierarchy the sandbox joins: where it is mounted and which
/// controllers (v1) it has; v2's unified hierarchy has none listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub root: PathBuf,
    /// v1: the controllers (and `name=`) of the mount, as `/proc/PID/cgroup`
    /// lists them; empty for v2.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    /// The cgroup process `pid` is in, in this hierarchy, from the text of
    /// its `/proc/PID/cgroup`.
    pub fn cgroup_of(&self, proc_cgroup: &str) -> Option<PathBuf> {
        proc_cgroup.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let listed: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
            let same = if self.is_v2() {
                listed.is_empty()
            } else {
                listed.len() == self.controllers.len()
                    && listed
                        .iter()
                        .all(|c| self.controllers.iter().any(|own| own == c))
            };
            same.then(|| self.root.join(path.trim_start_matches('/')))
        })
    }
}

/// The hierarchies a sandbox joins, from `/proc/self/mountinfo`'s text:
/// the v1 ones with an accounting controller where there are any (a v1 or
/// hybrid host), else the cgroup2 mount (a pure v2 host).
pub fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(fstype), _, Some(options)) = (right.next(), right.next(), right.next()) else {
            continue;
        };
        let root = PathBuf::from(mount_point);
        match fstype {
            "cgroup" => {
                let controllers: Vec<String> = options
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                    .map(str::to_owned)
                    .collect();
                let accounts = controllers
                    .iter()
                    .any(|c| V1_CONTROLLERS.contains(&c.as_str()));
                // The same hierarchy may be mounted twice; one will do.
                if accounts && !v1.iter().any(|h: &Hierarchy| h.controllers == controllers) {
                    v1.push(Hierarchy { root, controllers });
                }
            }
            "cgroup2" => v2.push(Hierarchy {
                root,
                controllers: Vec::new(),
            }),
            _ => {}
        }
    }
    if v1.is_empty() {
        v2.truncate(1);
        v2
    } else {
        v1
    }
}

/// This host's hierarchies, as [`hierarchies`] picks them.
pub fn host_hierarchies() -> Result<Vec<Hierarchy>, CgroupError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::io(
        Path::new("/proc/self/mountinfo"),
        "reading",
    ))?;
    let found = hierarchies(&mountinfo);
    if found.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    Ok(found)
}

/// How much more the VM's processes weigh than their owner when the OOM
/// killer picks a victim (oom_score_adj is -1000 to 1000).
const OOM_SCORE_OVER_OWNER: i32 = 500;

/// Makes process `pid` (one of the VM's) the OOM killer's choice before
/// this process (its owner, the shim): when the pod's cgroup runs out, the
/// VM that filled it goes and the shim lives to clean up and report.
/// Raising a score needs no privilege; it is never lowered here.
pub fn oom_victim_before_self(pid: u32) -> Result<(), CgroupError> {
    let read = |path: &Path| -> Result<i32, CgroupError> {
        let text = std::fs::read_to_string(path).map_err(CgroupError::io(path, "reading"))?;
        text.trim().parse().map_err(|_| {
            CgroupError::io(path, "reading")(std::io::Error::other(format!("{text:?}")))
        })
    };
    let own = read(Path::new("/proc/self/oom_score_adj"))?;
    let target = PathBuf::from(format!("/proc/{pid}/oom_score_adj"));
    let wanted = (own + OOM_SCORE_OVER_OWNER).min(1000);
    if read(&target)? < wanted {
        std::fs::write(&target, wanted.to_string())
            .map_err(CgroupError::io(&target, "raising the OOM score"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    const PURE_V2: &str = "\
25 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn roots(found: &[Hierarchy]) -> Vec<&str> {
        found.iter().map(|h| h.root.to_str().unwrap()).collect()
    }

    #[test]
    fn a_child_becomes_the_oom_victim_before_its_owner() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        oom_victim_before_self(child.id()).expect("raise");
        let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let its: i32 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", child.id()))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(its, (own + OOM_SCORE_OVER_OWNER).min(1000));
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    #[test]
    fn a_hybrid_host_joins_the_v1_hierarchies_that_account() {
        let found = hierarchies(HYBRID);
        assert_eq!(
            roots(&found),
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/blkio",
                "/sys/fs/cgroup/pids",
            ]
        );
        assert_eq!(found[0].controllers, ["cpu", "cpuacct"]);
    }

    #[test]
    fn a_pure_v2_host_joins_its_one_hierarchy() {
        let found = hierarchies(PURE_V2);
        assert_eq!(roots(&found), ["/sys/fs/cgroup"]);
        assert!(found[0].controllers.is_empty());
    }

    #[test]
    fn a_process_cgroup_is_found_per_hierarchy() {
        let proc_cgroup = "\
9:name=systemd:/
4:memory:/process_api/abc
2:cpuacct,cpu:/a/b
0::/user.slice
";
        let found = hierarchies(HYBRID);
        let memory = found.iter().find(|h| h.controllers == ["memory"]).unwrap();
        assert_eq!(
            memory.cgroup_of(proc_cgroup),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        // Listed in another order than the mount's options.
        assert_eq!(
            found[0].cgroup_of(proc_cgroup),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a/b"))
        );
        let v2 = &hierarchies(PURE_V2)[0];
        assert_eq!(
            v2.cgroup_of(proc_cgroup),
            Some(PathBuf::from("/sys/fs/cgroup/user.slice"))
        );
    }
}
