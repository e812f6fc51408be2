//! The pod's limits, read from the cgroups above the sandbox's: the kubelet
//! creates the pod's cgroup with the pod's memory limit and CPU quota (its
//! containers' limits plus the RuntimeClass overhead) before RunPodSandbox,
//! so that is where the VM's size comes from when the pod has limits.
//!
//! The tightest limit on the way up counts, as it does for the kernel: a
//! pod's cgroup without a limit of its own below a QoS cgroup with one is
//! bounded by that one. The sandbox's own cgroup does not exist yet when
//! this is read, and would have no limit of its own.

use std::path::{Path, PathBuf};

use super::{CgroupError, Hierarchy};

/// v1 writes "no limit" as the largest page-aligned counter; anything this
/// large is no limit (no machine has 4 EiB).
const V1_UNLIMITED_FROM: u64 = 1 << 62;

/// Reads a limit file's text: `None` when it is not a limit, `Some(None)`
/// when it says there is none.
type ParseLimit = fn(&str) -> Option<Option<u64>>;

/// The limits that bound a sandbox's cgroup from above.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// The memory limit, in bytes.
    pub memory_bytes: Option<u64>,
    /// The CPU quota, in thousandths of a CPU, rounded up.
    pub cpu_millis: Option<u64>,
}

impl PodLimits {
    /// The limits above the sandbox whose cgroup is `relative` (see
    /// [`super::resolve`]) in `hierarchies`. A cgroup or file that is not
    /// there is no limit; a file that says something else is an error
    /// naming it.
    pub fn above(hierarchies: &[Hierarchy], relative: &Path) -> Result<Self, CgroupError> {
        let mut limits = Self::default();
        for hierarchy in hierarchies {
            let leaf = hierarchy.root.join(relative);
            for dir in leaf
                .ancestors()
                .skip(1)
                .take_while(|dir| *dir != hierarchy.root)
            {
                limits = limits.tightest(Self::of_dir(hierarchy, dir)?);
            }
        }
        Ok(limits)
    }

    /// The limits above the sandbox of the spec's `linux.cgroupsPath`, on
    /// this host.
    pub fn for_spec(cgroups_path: &str) -> Result<Self, CgroupError> {
        let relative = super::resolve(cgroups_path)?;
        Self::above(&super::host_hierarchies()?, &relative)
    }

    fn tightest(self, other: Self) -> Self {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self {
            memory_bytes: min(self.memory_bytes, other.memory_bytes),
            cpu_millis: min(self.cpu_millis, other.cpu_millis),
        }
    }

    /// One cgroup's own limits, in the controllers `hierarchy` has.
    fn of_dir(hierarchy: &Hierarchy, dir: &Path) -> Result<Self, CgroupError> {
        let has = |controller: &str| {
            hierarchy.is_v2() || hierarchy.controllers.iter().any(|c| c == controller)
        };
        let mut limits = Self::default();
        if has("memory") {
            let (file, parse): (&str, ParseLimit) = if hierarchy.is_v2() {
                ("memory.max", parse_v2_memory_max)
            } else {
                ("memory.limit_in_bytes", parse_v1_memory_limit)
            };
            if let Some(text) = read_optional(&dir.join(file))? {
                limits.memory_bytes = parse(&text).ok_or_else(|| invalid(dir, file, &text))?;
            }
        }
        if has("cpu") {
            limits.cpu_millis = if hierarchy.is_v2() {
                match read_optional(&dir.join("cpu.max"))? {
                    Some(text) => {
                        parse_v2_cpu_max(&text).ok_or_else(|| invalid(dir, "cpu.max", &text))?
                    }
                    None => None,
                }
            } else {
                let quota = read_optional(&dir.join("cpu.cfs_quota_us"))?;
                let period = read_optional(&dir.join("cpu.cfs_period_us"))?;
                match (quota, period) {
                    (Some(quota), Some(period)) => {
                        parse_v1_cpu_quota(&quota, &period).ok_or_else(|| {
                            invalid(dir, "cpu.cfs_quota_us", &format!("{quota} / {period}"))
                        })?
                    }
                    _ => None,
                }
            };
        }
        Ok(limits)
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(CgroupError::io(path, "reading a limit")(err)),
    }
}

fn invalid(dir: &Path, file: &str, text: &str) -> CgroupError {
    let path: PathBuf = dir.join(file);
    CgroupError::io(&path, "reading a limit")(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{:?} is not a limit", text.trim()),
    ))
}

/// v2 `memory.max`: "max" or bytes. `None` when unreadable.
fn parse_v2_memory_max(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        bytes => bytes.parse().ok().map(Some),
    }
}

/// v1 `memory.limit_in_bytes`: bytes, "no limit" being a huge number.
fn parse_v1_memory_limit(text: &str) -> Option<Option<u64>> {
    let bytes: u64 = text.trim().parse().ok()?;
    Some((bytes < V1_UNLIMITED_FROM).then_some(bytes))
}

/// v2 `cpu.max`: "max PERIOD" or "QUOTA PERIOD", in microseconds.
fn parse_v2_cpu_max(text: &str) -> Option<Option<u64>> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: u64 = fields.next().map_or(Some(100_000), |p| p.parse().ok())?;
    if quota == "max" {
        return Some(None);
    }
    millis(quota.parse().ok()?, period).map(Some)
}

/// v1 `cpu.cfs_quota_us` (-1 for none) over `cpu.cfs_period_us`.
fn parse_v1_cpu_quota(quota: &str, period: &str) -> Option<Option<u64>> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    if quota < 0 {
        return Some(None);
    }
    millis(quota.unsigned_abs(), period).map(Some)
}

fn millis(quota: u64, period: u64) -> Option<u64> {
    (period > 0).then(|| (quota.saturating_mul(1000)).div_ceil(period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_of_a_limit_is_read() {
        assert_eq!(parse_v2_memory_max("max\n"), Some(None));
        assert_eq!(parse_v2_memory_max("1073741824\n"), Some(Some(1 << 30)));
        assert_eq!(parse_v2_memory_max("lots"), None);
        assert_eq!(
            parse_v1_memory_limit("9223372036854771712\n"),
            Some(None),
            "v1's no limit"
        );
        assert_eq!(parse_v1_memory_limit("536870912\n"), Some(Some(1 << 29)));
        assert_eq!(parse_v2_cpu_max("max 100000\n"), Some(None));
        assert_eq!(parse_v2_cpu_max("200000 100000\n"), Some(Some(2000)));
        assert_eq!(parse_v2_cpu_max("210000 100000\n"), Some(Some(2100)));
        assert_eq!(parse_v2_cpu_max("1 3"), Some(Some(334)), "rounded up");
        assert_eq!(parse_v2_cpu_max("100000 0"), None);
        assert_eq!(parse_v1_cpu_quota("-1\n", "100000\n"), Some(None));
        assert_eq!(parse_v1_cpu_quota("150000\n", "100000\n"), Some(Some(1500)));
        assert_eq!(parse_v1_cpu_quota("x", "100000"), None);
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join(file), text).expect(file);
    }

    #[test]
    fn the_tightest_limit_above_the_sandbox_counts_in_v2() {
        let root = tempfile::tempdir().expect("root");
        let v2 = [Hierarchy {
            root: root.path().to_owned(),
            controllers: Vec::new(),
        }];
        let qos = root.path().join("kubepods/burstable");
        let pod = qos.join("pod1");
        write(&qos, "memory.max", "4294967296\n");
        write(&qos, "cpu.max", "max 100000\n");
        write(&pod, "memory.max", "max\n");
        write(&pod, "cpu.max", "200000 100000\n");
        let relative = Path::new("kubepods/burstable/pod1/sandbox");
        assert_eq!(
            PodLimits::above(&v2, relative).expect("limits"),
            PodLimits {
                memory_bytes: Some(4 << 30),
                cpu_millis: Some(2000)
            }
        );
        write(&pod, "memory.max", "1073741824\n");
        assert_eq!(
            PodLimits::above(&v2, relative)
                .expect("limits")
                .memory_bytes,
            Some(1 << 30)
        );
        // The root's own files, where a test or a host has them, are not
        // the pod's.
        write(root.path(), "memory.max", "1\n");
        assert_eq!(
            PodLimits::above(&v2, relative)
                .expect("limits")
                .memory_bytes,
            Some(1 << 30)
        );
        // No pod cgroup at all: no limits.
        assert_eq!(
            PodLimits::above(&v2, Path::new("default/ctr1")).expect("limits"),
            PodLimits::default()
        );
        write(&pod, "cpu.max", "two 100000\n");
        let err = PodLimits::above(&v2, relative).expect_err("bad cpu.max");
        assert!(err.to_string().contains("pod1/cpu.max"), "{err}");
    }

    #[test]
    fn v1_limits_come_from_the_hierarchies_that_have_them() {
        let root = tempfile::tempdir().expect("root");
        let memory = root.path().join("memory");
        let cpu = root.path().join("cpu,cpuacct");
        let v1 = [
            Hierarchy {
                root: memory.clone(),
                controllers: vec!["memory".into()],
            },
            Hierarchy {
                root: cpu.clone(),
                controllers: vec!["cpu".into(), "cpuacct".into()],
            },
        ];
        write(&memory.join("pod1"), "memory.limit_in_bytes", "536870912\n");
        write(&cpu.join("pod1"), "cpu.cfs_quota_us", "300000\n");
        write(&cpu.join("pod1"), "cpu.cfs_period_us", "100000\n");
        // A file of another controller in the wrong hierarchy is ignored.
        write(&cpu.join("pod1"), "memory.limit_in_bytes", "1\n");
        assert_eq!(
            PodLimits::above(&v1, Path::new("pod1/sandbox")).expect("limits"),
            PodLimits {
                memory_bytes: Some(512 << 20),
                cpu_millis: Some(3000)
            }
        );
    }
}
