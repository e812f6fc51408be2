//! The layout of a pod's directory on the host, `<state_dir>/<pod>`: the one
//! place that knows what lies where in it.
//!
//! ```text
//! <state_dir>/<pod>/
//!   shim.pid      the shim serving the pod
//!   pids          the VM's processes, for the cleanup after a shim crash
//!   netns         the pod's network namespace, for the same cleanup
//!   console.log   the guest's serial console
//!   vm/           the VMM's work directory (sockets, helper logs)
//!   rw/           host-only (0700): where the shim mounts each container's
//!                 rootfs and volumes (`<cid>/rootfs`, `<cid>/mounts/<i>`),
//!                 and the pod's propagating volumes (`.volumes/<i>`)
//!   shared/       a read-only bind of rw/, the only thing virtiofsd exports
//! ```
//!
//! The guest reaches `shared/` alone, and its top level (and every
//! `<cid>` directory in it) is read-only to the guest: what it can write
//! are the containers' rootfs and read-write volumes, which are submounts
//! with their own flags. The shim never resolves a path through them.

use std::path::{Path, PathBuf};

/// The shim serving the pod.
const SHIM_PID_FILE: &str = "shim.pid";
/// The VM's processes, written once the VM has started.
const PIDS_FILE: &str = "pids";
/// The path of the pod's network namespace, when it has one.
const NETNS_FILE: &str = "netns";
/// The sandbox cgroup's directories, when the pod has one.
const CGROUP_FILE: &str = "cgroup";
const CONSOLE_LOG: &str = "console.log";
const VM_DIR: &str = "vm";
const HOST_ONLY_DIR: &str = "rw";
const SHARED_DIR: &str = "shared";

/// A pod's directory on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDir {
    root: PathBuf,
}

impl PodDir {
    /// The directory of pod `pod_id` under the config's `state_dir`.
    pub fn new(state_dir: &Path, pod_id: &str) -> Self {
        Self::at(state_dir.join(pod_id))
    }

    /// A pod directory known by its path (the bundle's record of it).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn shim_pid(&self) -> PathBuf {
        self.root.join(SHIM_PID_FILE)
    }

    pub fn pids(&self) -> PathBuf {
        self.root.join(PIDS_FILE)
    }

    pub fn netns(&self) -> PathBuf {
        self.root.join(NETNS_FILE)
    }

    pub fn cgroup(&self) -> PathBuf {
        self.root.join(CGROUP_FILE)
    }

    pub fn console_log(&self) -> PathBuf {
        self.root.join(CONSOLE_LOG)
    }

    pub fn vm(&self) -> PathBuf {
        self.root.join(VM_DIR)
    }

    /// Where the shim mounts: never exported, never writable by the guest.
    pub fn host_only(&self) -> PathBuf {
        self.root.join(HOST_ONLY_DIR)
    }

    /// What virtiofsd exports: a read-only view of [`Self::host_only`].
    pub fn shared(&self) -> PathBuf {
        self.root.join(SHARED_DIR)
    }

    /// A container's directory, relative to [`Self::host_only`] (and to
    /// [`Self::shared`], which shows the same tree).
    pub fn container(container_id: &str) -> PathBuf {
        PathBuf::from(container_id)
    }

    /// A container's rootfs, relative to [`Self::host_only`].
    pub fn container_rootfs(container_id: &str) -> PathBuf {
        Self::container(container_id).join("rootfs")
    }

    /// The directory of a container's bind mounts and volumes, relative to
    /// [`Self::host_only`].
    pub fn container_mounts(container_id: &str) -> PathBuf {
        Self::container(container_id).join("mounts")
    }

    /// Where the spec's `mounts[index]` is bound, relative to
    /// [`Self::host_only`].
    pub fn container_mount(container_id: &str, index: usize) -> PathBuf {
        Self::container_mounts(container_id).join(index.to_string())
    }

    /// The directory of the pod's volumes whose mounts propagate, relative
    /// to [`Self::host_only`]. No container id starts with a dot
    /// (containerd's identifiers), so it is no container's directory.
    pub fn pod_volumes() -> PathBuf {
        PathBuf::from(".volumes")
    }

    /// The pod's `index`th propagating volume, relative to
    /// [`Self::host_only`].
    pub fn pod_volume(index: usize) -> PathBuf {
        Self::pod_volumes().join(index.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_stated_once() {
        let pod = PodDir::new(Path::new("/run/hull"), "p1");
        assert_eq!(pod.path(), Path::new("/run/hull/p1"));
        assert_eq!(pod.shared(), Path::new("/run/hull/p1/shared"));
        assert_eq!(pod.host_only(), Path::new("/run/hull/p1/rw"));
        assert_eq!(pod.vm(), Path::new("/run/hull/p1/vm"));
        assert_eq!(pod.console_log(), Path::new("/run/hull/p1/console.log"));
        assert_eq!(pod.pids(), Path::new("/run/hull/p1/pids"));
        assert_eq!(pod.netns(), Path::new("/run/hull/p1/netns"));
        assert_eq!(pod.shim_pid(), Path::new("/run/hull/p1/shim.pid"));
        assert_eq!(PodDir::container_mount("c1", 3), Path::new("c1/mounts/3"));
        assert_eq!(PodDir::container_rootfs("c1"), Path::new("c1/rootfs"));
        assert_eq!(PodDir::pod_volume(2), Path::new(".volumes/2"));
    }
}
