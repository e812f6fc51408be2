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

const NO_CAPS: &str = "0000000000000000";

/// Not root: every one of the real, effective, saved and filesystem uids.
fn assert_not_root(name: &str, pid: u32) {
    let uids = status_field(pid, "Uid");
    assert!(
        uids.split_whitespace().all(|uid| uid != "0"),
        "{name} runs as root (Uid: {uids})"
    );
}

/// In a network namespace other than the host's (this test's).
fn assert_own_network(name: &str, pid: u32) {
    let net = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("net ns");
    assert_ne!(
        net(&pid.to_string()),
        net("self"),
        "{name} is in the host's network namespace"
    );
}

/// QEMU under its `-sandbox` seccomp filter, not root (`-runas`); hull-vmm
/// jailed in the work directory, not root, in its own network namespace,
/// with no capabilities under its filter; virtiofsd's worker under its
/// filter and pivoted into the shared directory; vhost-device-vsock not
/// root, with no capabilities, under the filter Hull gives it, in its own
/// network namespace.
pub fn assert_helpers_confined(vm: &Vm, shared_dir: &Path) {
    let mut seen_vsock = false;
    for (name, pid) in vm.pids() {
        match name {
            "qemu" => {
                assert_eq!(status_field(pid, "Seccomp"), "2", "qemu");
                assert_not_root(name, pid);
                assert_eq!(status_field(pid, "CapEff"), NO_CAPS, "qemu");
            }
            "hull-vmm" => {
                let vmm = only_child(pid);
                assert_eq!(status_field(vmm, "Seccomp"), "2", "hull-vmm");
                assert_eq!(status_field(vmm, "CapEff"), NO_CAPS, "hull-vmm");
                assert_namespaced(name, vmm, vm.work_dir());
                assert_not_root(name, vmm);
                assert_own_network(name, vmm);
            }
            "vhost-device-vsock" => {
                seen_vsock = true;
                assert_eq!(status_field(pid, "Seccomp"), "2", "{name}");
                assert_eq!(status_field(pid, "CapEff"), NO_CAPS, "{name}");
                assert_eq!(status_field(pid, "CapBnd"), NO_CAPS, "{name}");
                assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{name}");
                assert_not_root(name, pid);
                assert_own_network(name, pid);
            }
            "virtiofsd" => {
                let worker = only_child(pid);
                assert_eq!(status_field(worker, "Seccomp"), "2", "virtiofsd");
                assert_namespaced(name, worker, shared_dir);
            }
            _ => {}
        }
    }
    let qemu = vm.pids().iter().any(|(name, _)| *name == "qemu");
    assert_eq!(seen_vsock, qemu, "vhost-device-vsock runs with QEMU only");
}
