//! A pod's cgroup on the host, made as the kubelet makes one before
//! RunPodSandbox: in every hierarchy that accounts, with the pod's limits.
//! The CRI suites pass it as the pod's `cgroup_parent`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_hypervisor::cgroup::{Hierarchy, host_hierarchies};

/// The pod's parent cgroup, made as the kubelet makes a pod's: in every
/// hierarchy that accounts, with a memory limit (and a CPU quota once
/// [`ParentCgroup::set_cpu_limit`] sets one). Removed when dropped.
#[derive(Debug)]
pub struct ParentCgroup {
    name: String,
    hierarchies: Vec<Hierarchy>,
    /// Where the memory controller is: the v1 memory hierarchy, or v2's.
    memory: PathBuf,
    /// Where the cpu controller is.
    cpu: PathBuf,
    v2: bool,
}

impl ParentCgroup {
    /// The cgroup `/name` with a memory limit of `limit` bytes.
    pub fn create(name: &str, limit: u64) -> Self {
        let parent = Self::without_limits(name);
        parent.set_limit(limit);
        parent
    }

    /// The cgroup `/name` with no limit of its own, as a BestEffort pod's.
    pub fn without_limits(name: &str) -> Self {
        let hierarchies = host_hierarchies().expect("cgroup hierarchies");
        let mut memory = None;
        let mut cpu = None;
        let mut v2 = false;
        for hierarchy in &hierarchies {
            let dir = hierarchy.root.join(name);
            if hierarchy.controllers.is_empty() {
                // v2: the root must hand the controllers down.
                for controller in ["+memory", "+cpu"] {
                    std::fs::write(hierarchy.root.join("cgroup.subtree_control"), controller)
                        .unwrap_or_else(|err| panic!("enabling the v2 {controller}: {err}"));
                }
                v2 = true;
            }
            std::fs::create_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
            if hierarchy.controllers.iter().any(|c| c == "cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = std::fs::read_to_string(hierarchy.root.join(file)).expect(file);
                    std::fs::write(dir.join(file), parent.trim()).expect(file);
                }
            }
            if hierarchy.controllers.is_empty()
                || hierarchy.controllers.iter().any(|c| c == "memory")
            {
                memory = Some(dir.clone());
            }
            if hierarchy.controllers.is_empty() || hierarchy.controllers.iter().any(|c| c == "cpu")
            {
                cpu = Some(dir);
            }
        }
        Self {
            name: name.to_owned(),
            hierarchies,
            memory: memory.expect("a hierarchy with the memory controller"),
            cpu: cpu.expect("a hierarchy with the cpu controller"),
            v2,
        }
    }

    pub fn set_limit(&self, bytes: u64) {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(self.memory.join(file), bytes.to_string()).expect(file);
    }

    /// A CPU quota of `millis` thousandths of a CPU per 100 ms period.
    pub fn set_cpu_limit(&self, millis: u64) {
        let quota = millis * 100;
        if self.v2 {
            std::fs::write(self.cpu.join("cpu.max"), format!("{quota} 100000")).expect("cpu.max");
        } else {
            std::fs::write(self.cpu.join("cpu.cfs_period_us"), "100000")
                .expect("cpu.cfs_period_us");
            std::fs::write(self.cpu.join("cpu.cfs_quota_us"), quota.to_string())
                .expect("cpu.cfs_quota_us");
        }
    }

    pub fn read(&self, file: &str) -> u64 {
        std::fs::read_to_string(self.memory.join(file))
            .unwrap_or_else(|err| panic!("{file}: {err}"))
            .trim()
            .parse()
            .unwrap_or_else(|err| panic!("{file}: {err}"))
    }

    pub fn usage(&self) -> u64 {
        self.read(if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        })
    }

    /// The most the cgroup ever used, where the kernel keeps it.
    pub fn peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.memory.join(file).exists().then(|| self.read(file))
    }

    /// How many processes the kernel's OOM killer took in it. v2 counts
    /// the whole subtree in `memory.events`; v1 counts a kill in the
    /// victim's own cgroup (the sandbox's, below), so those are added.
    pub fn oom_kills(&self) -> u64 {
        let count = |dir: &Path, file: &str| -> u64 {
            std::fs::read_to_string(dir.join(file))
                .unwrap_or_default()
                .lines()
                .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
                .unwrap_or(0)
        };
        if self.v2 {
            return count(&self.memory, "memory.events");
        }
        let below: u64 = std::fs::read_dir(&self.memory)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .map(|entry| count(&entry.path(), "memory.oom_control"))
            .sum();
        count(&self.memory, "memory.oom_control") + below
    }

    /// Directories below it: the sandbox's cgroup while the pod runs.
    pub fn children(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .flat_map(|h| {
                std::fs::read_dir(h.root.join(&self.name))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|entry| entry.path().is_dir())
                    .map(|entry| entry.path())
            })
            .collect()
    }

    /// Fails unless process `pid` is in a cgroup below this one in every
    /// hierarchy.
    pub fn assert_holds(&self, what: &str, pid: i32) {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_else(|err| panic!("{what} (pid {pid}): {err}"));
        for hierarchy in &self.hierarchies {
            let parent = hierarchy.root.join(&self.name);
            let cgroup = hierarchy.cgroup_of(&cgroups);
            assert!(
                cgroup
                    .as_deref()
                    .is_some_and(|dir| dir.starts_with(&parent) && dir != parent),
                "{what} (pid {pid}) is in {cgroup:?}, not below the pod's cgroup {}:\n{cgroups}",
                parent.display()
            );
        }
    }
}

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        for hierarchy in &self.hierarchies {
            let dir = hierarchy.root.join(&self.name);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                // What the shim left (the test fails on it elsewhere).
                for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if child.path().is_dir() {
                        kill_in(&child.path());
                        let _ = std::fs::remove_dir(child.path());
                    }
                }
                kill_in(&dir);
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
                    Err(err) if Instant::now() >= deadline => {
                        eprintln!("removing {}: {err}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

fn kill_in(dir: &Path) {
    let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    crate::containerd::kill_all(&pids);
}

/// The kernel's log from the moment it is opened: whether a memory
/// cgroup's OOM killer took a pid. cgroup v1 counts a kill only in the
/// victim's own cgroup, and that one (the sandbox's) can be gone, counter
/// and all, before a test reads it: the shim tears the pod down as soon as
/// its VMM dies. The log stays. Only later records count, so an older kill
/// of a process that had the same pid is not taken for this one.
#[derive(Debug)]
pub struct KernelLog(Option<std::fs::File>);

impl KernelLog {
    pub fn from_now() -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open("/dev/kmsg")
            .ok()
            // SEEK_END on /dev/kmsg: the next record to be written.
            .filter(|mut kmsg| std::io::Seek::seek(&mut kmsg, std::io::SeekFrom::End(0)).is_ok());
        Self(kmsg)
    }

    pub fn oom_killed(&mut self, pid: i32) -> bool {
        use std::io::Read;
        let Some(kmsg) = self.0.as_mut() else {
            return false;
        };
        let wanted = format!("Memory cgroup out of memory: Killed process {pid} ");
        // One record per read; EAGAIN after the last one.
        let mut record = vec![0u8; 8192];
        loop {
            match kmsg.read(&mut record) {
                Ok(0) => return false,
                Ok(read) => {
                    if String::from_utf8_lossy(&record[..read]).contains(&wanted) {
                        return true;
                    }
                }
                // A record overwritten while reading: go on with the next.
                Err(err) if err.raw_os_error() == Some(nix::libc::EPIPE) => {}
                Err(_) => return false,
            }
        }
    }
}
