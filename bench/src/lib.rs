//! Shared pieces of Hull's benchmarks.

pub mod args;
pub mod boot;
pub mod results;

/// `a / b`, printed with two decimals; "-" when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".to_owned()
    } else {
        format!("{:.2}", a / b)
    }
}

/// A process's resident memory in KiB from its /proc/PID/smaps text, split
/// into guest RAM (the memfd mappings that back it) and the rest: the
/// process's own overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    pub own_kib: u64,
    pub guest_kib: u64,
}

pub fn rss_from_smaps(smaps: &str) -> Rss {
    sum_from_smaps(smaps, "Rss:")
}

/// [`rss_from_smaps`] of a running process.
pub fn rss_of(pid: u32) -> std::io::Result<Rss> {
    Ok(rss_from_smaps(&smaps_of(pid)?))
}

/// A process's proportional set size in KiB from its /proc/PID/smaps text,
/// split like [`rss_from_smaps`]: guest RAM (memfd mappings, which the VMM
/// shares with virtiofsd and vhost-device-vsock, hence PSS) and the rest.
pub fn pss_from_smaps(smaps: &str) -> Rss {
    sum_from_smaps(smaps, "Pss:")
}

/// [`pss_from_smaps`] of a running process.
pub fn pss_of(pid: u32) -> std::io::Result<Rss> {
    Ok(pss_from_smaps(&smaps_of(pid)?))
}

fn smaps_of(pid: u32) -> std::io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
}

/// The sum of every mapping's `field` line (`Rss:`, `Pss:`), split into
/// the memfd mappings and the rest.
fn sum_from_smaps(smaps: &str, field: &str) -> Rss {
    let mut sum = Rss::default();
    let mut in_memfd = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, perms, offset, dev, inode, path.
            in_memfd = fields
                .nth(4)
                .is_some_and(|path| path.starts_with("/memfd:"));
        } else if first == field {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if in_memfd {
                sum.guest_kib += kib;
            } else {
                sum.own_kib += kib;
            }
        }
    }
    sum
}

/// What `program args…` printed on stdout, trimmed; empty if it could not
/// run.
pub fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The nearest-rank percentile `p` (0 to 100); zero when empty.
pub fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// The middle value (upper middle for an even count); zero when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_told_apart_by_its_memfd() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 00:1f 1234 /usr/bin/hull-vmm
Size:               1024 kB
Rss:                 700 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 99 /memfd:hull-guest-ram (deleted)
Size:             262144 kB
Rss:               30000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  12 kB
";
        assert_eq!(
            rss_from_smaps(smaps),
            Rss {
                own_kib: 712,
                guest_kib: 30000
            }
        );
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(Vec::new()), 0.0);
        assert_eq!(ratio(1.0, 4.0), "0.25");
        assert_eq!(ratio(1.0, 0.0), "-");
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(twenty.clone(), 95.0), 19.0);
        assert_eq!(percentile(twenty, 50.0), 10.0);
        assert_eq!(percentile(vec![7.0], 95.0), 7.0);
        assert_eq!(percentile(Vec::new(), 95.0), 0.0);
    }

    #[test]
    fn pss_is_split_the_same_way() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 00:1f 1234 /usr/bin/qemu
Rss:                 700 kB
Pss:                 350 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 99 /memfd:mem (deleted)
Rss:               30000 kB
Pss:               15000 kB
";
        assert_eq!(
            pss_from_smaps(smaps),
            Rss {
                own_kib: 350,
                guest_kib: 15000
            }
        );
    }
}
