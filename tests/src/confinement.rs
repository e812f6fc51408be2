//! What the VM's helper processes run under, read from /proc.

use std::path::Path;

use hull_hypervisor::Vm;

/// A `/proc/PID/status` field's value.
pub fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The one child of `pid`: virtiofsd's sandboxed worker, hull-vmm's jailed
/// VMM under its keeper.
pub fn only_child(pid: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).expect("children");
    let children: Vec<u32> = children
        .split_whitespace()
        .map(|child| child.parse().expect("pid"))
        .collect();
    assert_eq!(children.len(), 1, "the children of {pid}: {children:?}");
    children[0]
}

pub fn same_file(a: impl AsRef<Path>, b: impl AsRef<Path>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        std::fs::metadata(a).expect("stat"),
        std::fs::metadata(b).expect("stat"),
    );
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// In a PID namespace of its own, with `root` as its root.
fn assert_namespaced(name: &str, pid: u32, root: &Path) {
    assert_eq!(
        status_field(pid, "NSpid").split_whitespace().count(),
        2,
        "{name} is not in a PID namespace of its own"
    );
    assert!(
        same_file(format!("/proc/{pid}/root"), root),
        "{name}'s root is not {}",
        root.display()
    );
}

/// QEMU under its `-sandbox` seccomp filter; hull-vmm jailed in the work
/// directory with no capabilities under its filter; virtiofsd's worker
/// under its filter and pivoted into the shared directory.
/// vhost-device-vsock has no sandbox of its own.
pub fn assert_helpers_confined(vm: &Vm, shared_dir: &Path) {
    for (name, pid) in vm.pids() {
        match name {
            "qemu" => assert_eq!(status_field(pid, "Seccomp"), "2", "qemu"),
            "hull-vmm" => {
                let vmm = only_child(pid);
                assert_eq!(status_field(vmm, "Seccomp"), "2", "hull-vmm");
                assert_eq!(status_field(vmm, "CapEff"), "0000000000000000", "hull-vmm");
                assert_namespaced(name, vmm, vm.work_dir());
            }
            "virtiofsd" => {
                let worker = only_child(pid);
                assert_eq!(status_field(worker, "Seccomp"), "2", "virtiofsd");
                assert_namespaced(name, worker, shared_dir);
            }
            _ => {}
        }
    }
}
