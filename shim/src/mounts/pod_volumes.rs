//! The pod's volumes whose mounts propagate (`rshared`, `rslave`, as CRI
//! asks for Bidirectional and HostToContainer mount propagation).
//!
//! Each container's other volumes are bound for it alone
//! (`<cid>/mounts/<i>`). A propagating one is bound once per pod and source
//! (`.volumes/<i>`), so that every container of the pod that mounts it
//! mounts the same guest directory: the agent makes that a shared mount in
//! the guest, and a mount one container makes below an `rshared` volume
//! then shows in the other containers' views of it, as it would through
//! the host with runc. Nothing crosses the VM boundary: mounts made in the
//! guest never reach the host, and the host's later mounts below the source
//! never reach the guest (docs/DESIGN.md, "Mount propagation").
//!
//! They stay for the pod's life, as the kubelet's volumes do, and go when
//! the shared directory does.
//!
//! A `/dev/shm` bind from a host tmpfs (containerd's sandbox shm, or a
//! Memory-medium emptyDir there) becomes one guest tmpfs per pod and
//! source, of the source's size, that every container binding it shares:
//! POSIX shared memory is then shared within the pod and sized by the pod,
//! as with runc, and lives in guest memory, which the pod's limits bound.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::{clone_source, fd};
use crate::error::{Result, ShimError};
use crate::pod_dir::PodDir;

/// The mount options of a propagation that makes a volume the pod's.
const PROPAGATING: &[&str] = &["shared", "rshared", "slave", "rslave"];

/// Whether a mount with `options` propagates mounts (shared or slave).
pub fn propagates(options: &[String]) -> bool {
    options.iter().any(|o| PROPAGATING.contains(&o.as_str()))
}

/// The pod's propagating volumes, keyed by source and read-only flag.
#[derive(Debug, Default)]
pub struct PodVolumes {
    /// Each bound source, with its path relative to the host-only
    /// directory. The lock is held across the bind of a new one: containers
    /// of one pod are prepared one at a time anyway (the pod's lock), and a
    /// second container must not see the path before the mount is there.
    bound: Mutex<Vec<Bound>>,
    /// The host tmpfs sources of the pod's guest tmpfs, by index.
    tmpfs: Mutex<Vec<PathBuf>>,
}

/// Where the agent mounts the pod's tmpfs (below its sandbox's shared
/// directory, where it accepts pod mounts).
pub const GUEST_POD_TMPFS_DIR: &str = "/run/hull-agent/sandbox/shared/tmpfs";

/// A guest tmpfs of the pod, for the agent to mount once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTmpfs {
    /// Its path in the guest.
    pub target: String,
    pub size_bytes: u64,
}

#[derive(Debug)]
struct Bound {
    source: PathBuf,
    read_only: bool,
    /// Relative to the host-only directory.
    relative: PathBuf,
    is_dir: bool,
}

impl PodVolumes {
    /// The path of `source`'s pod volume, relative to the host-only
    /// directory `root` (at `host_only`), bound now if it is the first
    /// container to ask.
    pub fn bind(
        &self,
        root: BorrowedFd<'_>,
        host_only: &Path,
        source: &Path,
        read_only: bool,
    ) -> Result<PathBuf> {
        let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(volume) = bound
            .iter()
            .find(|volume| volume.source == source && volume.read_only == read_only)
        {
            return Ok(volume.relative.clone());
        }
        let relative = PodDir::pod_volume(bound.len());
        let show = || host_only.join(&relative).display().to_string();
        let (tree, is_dir) = clone_source(source, read_only)?;
        let target = if is_dir {
            fd::mkdir_all_beneath(root, &relative)
        } else {
            fd::create_file_beneath(root, &relative)
        };
        let attached = target
            .map_err(ShimError::io(format!("creating {}", show())))
            .and_then(|target| {
                fd::attach(tree.as_fd(), target.as_fd()).map_err(ShimError::io(format!(
                    "binding {} to {}",
                    source.display(),
                    show()
                )))
            });
        if let Err(err) = attached {
            remove(root, &relative, is_dir);
            return Err(err);
        }
        bound.push(Bound {
            source: source.to_owned(),
            read_only,
            relative: relative.clone(),
            is_dir,
        });
        Ok(relative)
    }

    /// The pod's guest tmpfs standing for `source`, if that is a tmpfs on
    /// the host: the same for every container that binds it, its size the
    /// source's.
    pub fn tmpfs(&self, source: &Path) -> Result<Option<GuestTmpfs>> {
        let stat = nix::sys::statfs::statfs(source).map_err(|errno| ShimError::Io {
            context: format!("statfs {}", source.display()),
            source: errno.into(),
        })?;
        if stat.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
            return Ok(None);
        }
        let size_bytes = (stat.blocks() as u64).saturating_mul(stat.block_size() as u64);
        let mut sources = self.tmpfs.lock().unwrap_or_else(PoisonError::into_inner);
        let index = match sources.iter().position(|known| known == source) {
            Some(index) => index,
            None => {
                sources.push(source.to_owned());
                sources.len() - 1
            }
        };
        Ok(Some(GuestTmpfs {
            target: format!("{GUEST_POD_TMPFS_DIR}/{index}"),
            size_bytes,
        }))
    }

    /// Unmounts every pod volume and removes what was made for them.
    pub fn release(&self, root: BorrowedFd<'_>, host_only: &Path) {
        let bound = std::mem::take(&mut *self.bound.lock().unwrap_or_else(PoisonError::into_inner));
        for volume in bound {
            if let Err(err) = fd::unmount(&host_only.join(&volume.relative)) {
                tracing::warn!(%err, target = %volume.relative.display(), "unmounting a pod volume");
            }
            remove(root, &volume.relative, volume.is_dir);
        }
        if let Err(err) = fd::remove_beneath(root, &PodDir::pod_volumes(), true) {
            tracing::warn!(%err, "removing the pod volumes' directory");
        }
    }
}

fn remove(root: BorrowedFd<'_>, relative: &Path, is_dir: bool) {
    if let Err(err) = fd::remove_beneath(root, relative, is_dir) {
        tracing::warn!(%err, path = %relative.display(), "removing a pod volume's mount point");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_tmpfs_becomes_one_guest_tmpfs_of_its_size_per_source() {
        let volumes = PodVolumes::default();
        // /dev/shm is a tmpfs on every host these tests run on.
        let shm = volumes
            .tmpfs(Path::new("/dev/shm"))
            .expect("statfs")
            .expect("a tmpfs");
        let stat = nix::sys::statfs::statfs("/dev/shm").expect("statfs");
        assert_eq!(
            shm.size_bytes,
            stat.blocks() as u64 * stat.block_size() as u64
        );
        assert_eq!(shm.target, format!("{GUEST_POD_TMPFS_DIR}/0"));
        assert_eq!(
            volumes.tmpfs(Path::new("/dev/shm")).expect("again"),
            Some(shm),
            "the same source is the same guest tmpfs"
        );
        let dir = tempfile::tempdir().expect("dir");
        if nix::sys::statfs::statfs(dir.path())
            .expect("statfs")
            .filesystem_type()
            != nix::sys::statfs::TMPFS_MAGIC
        {
            assert_eq!(volumes.tmpfs(dir.path()).expect("statfs"), None);
        }
        let err = volumes
            .tmpfs(Path::new("/nonexistent/shm"))
            .expect_err("a missing source");
        assert!(err.to_string().contains("/nonexistent/shm"), "{err}");
    }

    #[test]
    fn shared_and_slave_propagation_make_a_volume_the_pods() {
        let options = |list: &[&str]| list.iter().map(|o| o.to_string()).collect::<Vec<_>>();
        assert!(propagates(&options(&["rbind", "rshared"])));
        assert!(propagates(&options(&["rbind", "rslave", "ro"])));
        assert!(propagates(&options(&["bind", "slave"])));
        assert!(!propagates(&options(&["rbind", "rprivate"])));
        assert!(!propagates(&options(&["rbind", "ro"])));
    }
}
