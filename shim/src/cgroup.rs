//! The pod's VM charged to the pod: the shim moves itself into the
//! sandbox's cgroup (the sandbox spec's `linux.cgroupsPath`, below the
//! kubelet's pod cgroup) before it starts anything for the pod, so that
//! virtiofsd, vhost-device-vsock and the VMM start there (a child starts in
//! its parent's cgroup) and every page of guest RAM they touch is charged
//! to the pod; the shim's own per-pod work (the network set-up, stdio
//! copies, the agent's connection) is charged there too. One shim serves
//! one pod, so nothing of another pod's is.
//!
//! The cgroup goes when the pod stops: the shim moves back to where it came
//! from, kills whatever is still in the cgroup and removes it. The cgroup's
//! directories are recorded in the pod directory first, so that the cleanup
//! after a shim crash ([`crate::crash`]) removes them too.
//!
//! Why the shim moves rather than a `pre_exec` hook per helper: the VM's
//! processes then start in the cgroup whatever spawns them, the shim's own
//! per-pod work is charged too, and so is every process they fork
//! (virtiofsd's sandboxed child).

use std::path::Path;
use std::time::Duration;

use hull_hypervisor::cgroup::{Joined, SandboxCgroup};

use crate::error::{Result, ShimError};

/// How long the removal waits for killed processes to leave the cgroup.
const REMOVE_PATIENCE: Duration = Duration::from_secs(5);

/// The sandbox's cgroup with the shim in it; leaves and removes it when
/// dropped, so that no failure path leaks it.
#[derive(Debug)]
pub struct PodCgroup {
    cgroup: SandboxCgroup,
    joined: Option<Joined>,
}

impl PodCgroup {
    /// Creates the cgroup `cgroups_path` names, records it in `pod_dir` and
    /// moves the shim into it.
    pub fn enter(cgroups_path: &str, pod_dir: &Path) -> Result<Self> {
        let cgroup = SandboxCgroup::for_spec(cgroups_path)?;
        let record = crate::pod_dir::PodDir::at(pod_dir).cgroup();
        std::fs::write(&record, cgroup.record())
            .map_err(ShimError::io(format!("writing {}", record.display())))?;
        let mut pod_cgroup = Self {
            cgroup,
            joined: None,
        };
        // On failure the drop removes what was created.
        pod_cgroup.cgroup.create()?;
        pod_cgroup.joined = Some(pod_cgroup.cgroup.join()?);
        tracing::info!(cgroups_path, dirs = ?pod_cgroup.cgroup.leaves(), "the shim and the pod's VM run in the sandbox's cgroup");
        Ok(pod_cgroup)
    }

    /// Moves the shim out and removes the cgroup, with anything left in it.
    pub fn release(self) {
        // The drop does it.
        drop(self);
    }

    fn release_now(&mut self) {
        if let Some(joined) = self.joined.take() {
            joined.leave();
        }
        let killed = self.cgroup.remove(REMOVE_PATIENCE);
        if !killed.is_empty() {
            tracing::warn!(?killed, "killed what was left in the sandbox's cgroup");
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        self.release_now();
    }
}
