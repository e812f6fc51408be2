//! Reads a container's cgroup v2 files: statistics, member processes and OOM
//! kills.
//!
//! A controller that is not enabled for the cgroup has no files; its
//! statistics are then left out rather than reported as zero.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hull_proto::v1 as api;

/// Reads the flat `key value` lines of files like cpu.stat and memory.stat.
fn read_flat_keyed(path: &Path) -> Option<HashMap<String, u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(parse_flat_keyed(&text))
}

fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Reads a single-value file; "max" (no limit) reads as 0.
fn read_value(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_value(&text)
}

fn parse_value(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(0),
        value => value.parse().ok(),
    }
}

/// Parses io.stat: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`.
fn parse_io_stat(text: &str) -> Vec<api::IoDeviceStats> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (major, minor) = fields.next()?.split_once(':')?;
            let mut device = api::IoDeviceStats {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for field in fields {
                let Some((key, value)) = field.split_once('=') else {
                    continue;
                };
                let value = value.parse().unwrap_or(0);
                match key {
                    "rbytes" => device.read_bytes = value,
                    "wbytes" => device.write_bytes = value,
                    "rios" => device.read_ios = value,
                    "wios" => device.write_ios = value,
                    _ => {}
                }
            }
            Some(device)
        })
        .collect()
}

/// The statistics of the cgroup at `dir`.
pub fn stats(dir: &Path) -> std::io::Result<api::StatsContainerResponse> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("cgroup {} does not exist", dir.display()),
        ));
    }
    let cpu = read_flat_keyed(&dir.join("cpu.stat")).map(|stat| {
        let get = |key: &str| stat.get(key).copied().unwrap_or(0);
        api::CpuStats {
            usage_usec: get("usage_usec"),
            user_usec: get("user_usec"),
            system_usec: get("system_usec"),
            nr_periods: get("nr_periods"),
            nr_throttled: get("nr_throttled"),
            throttled_usec: get("throttled_usec"),
        }
    });
    let memory = read_value(&dir.join("memory.current")).map(|usage_bytes| api::MemoryStats {
        usage_bytes,
        limit_bytes: read_value(&dir.join("memory.max")).unwrap_or(0),
        max_usage_bytes: read_value(&dir.join("memory.peak")).unwrap_or(0),
        oom_kill_count: oom_kills(dir).unwrap_or(0),
        stat: read_flat_keyed(&dir.join("memory.stat")).unwrap_or_default(),
    });
    let pids = read_value(&dir.join("pids.current")).map(|current| api::PidsStats {
        current,
        limit: read_value(&dir.join("pids.max")).unwrap_or(0),
    });
    let io = std::fs::read_to_string(dir.join("io.stat"))
        .ok()
        .map(|text| api::IoStats {
            devices: parse_io_stat(&text),
        });
    Ok(api::StatsContainerResponse {
        cpu,
        memory,
        pids,
        io,
    })
}

/// How many times the kernel OOM-killed a process of this cgroup.
pub fn oom_kills(dir: &Path) -> Option<u64> {
    read_flat_keyed(&dir.join("memory.events"))?
        .get("oom_kill")
        .copied()
}

/// Every process in the cgroup and its descendants.
pub fn pids(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    let mut pending: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
        pids.extend(
            procs
                .lines()
                .filter_map(|line| line.trim().parse::<u32>().ok()),
        );
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Kills every process of the cgroup at once (Linux 5.14+).
pub fn kill_all(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.kill"), "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_v2_formats() {
        let cpu = parse_flat_keyed("usage_usec 120\nuser_usec 100\nsystem_usec 20\n");
        assert_eq!(cpu.get("usage_usec"), Some(&120));
        assert_eq!(parse_value("max\n"), Some(0));
        assert_eq!(parse_value("33554432\n"), Some(33554432));
        let io = parse_io_stat("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(io.len(), 1);
        assert_eq!((io[0].major, io[0].minor), (8, 0));
        assert_eq!((io[0].read_bytes, io[0].write_bytes), (4096, 8192));
        assert_eq!((io[0].read_ios, io[0].write_ios), (1, 2));
    }

    #[test]
    fn leaves_out_controllers_that_are_not_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 5\n").expect("write");
        std::fs::write(dir.path().join("memory.current"), "4096\n").expect("write");
        std::fs::write(dir.path().join("memory.max"), "max\n").expect("write");
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\noom 1\noom_kill 2\n",
        )
        .expect("write");
        let stats = stats(dir.path()).expect("stats");
        assert_eq!(stats.cpu.map(|c| c.usage_usec), Some(5));
        let memory = stats.memory.expect("memory");
        assert_eq!((memory.usage_bytes, memory.limit_bytes), (4096, 0));
        assert_eq!(memory.oom_kill_count, 2);
        assert!(stats.pids.is_none());
        assert!(stats.io.is_none());
    }
}
