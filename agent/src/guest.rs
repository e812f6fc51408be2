//! Facts about the machine the agent runs on.

use std::path::Path;

use hull_proto::v1 as api;

/// `statfs` magic of a cgroup2 mount (x86_64 and aarch64 report `f_type` as i64).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub fn details(cgroup_root: &Path, pid1: bool) -> api::GuestDetailsResponse {
    let kernel_release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let online_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    api::GuestDetailsResponse {
        kernel_release,
        online_cpus,
        memory_total_bytes: memory_total().unwrap_or(0),
        cgroup_mode: cgroup_mode(cgroup_root).to_owned(),
        pid1,
    }
}

fn memory_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cgroup_mode(cgroup_root: &Path) -> &'static str {
    match rustix::fs::statfs(cgroup_root) {
        Ok(stat) if stat.f_type == CGROUP2_SUPER_MAGIC => "v2",
        Ok(_) => "v1",
        Err(_) => "none",
    }
}
