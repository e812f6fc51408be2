//! PSS of a pod's processes, for section 3: a shim and everything below
//! it, since the VMM, virtiofsd and the pause process are its descendants.

use std::collections::HashMap;

use hull_bench::pss_of;

/// Every process below `root` (children of children, ...) with `root`.
fn with_descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after `(comm)`: state, ppid, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        if let Some(kids) = children.get(&found[index]) {
            found.extend(kids);
        }
        index += 1;
    }
    found
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}

/// PSS of every shim and its descendants: (own KiB, guest RAM KiB, and
/// per process name the own + guest KiB).
pub(crate) fn memory_of_shims(shims: &[i32]) -> (u64, u64, Vec<(String, u64)>) {
    let (mut own, mut guest) = (0, 0);
    let mut by_name: Vec<(String, u64)> = Vec::new();
    for shim in shims {
        for pid in with_descendants(*shim as u32) {
            let Ok(pss) = pss_of(pid) else { continue };
            own += pss.own_kib;
            guest += pss.guest_kib;
            let name = comm(pid);
            match by_name.iter_mut().find(|(n, _)| *n == name) {
                Some((_, kib)) => *kib += pss.own_kib + pss.guest_kib,
                None => by_name.push((name, pss.own_kib + pss.guest_kib)),
            }
        }
    }
    (own, guest, by_name)
}
