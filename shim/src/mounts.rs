//! The pod's shared directory on the host, exported to the guest by
//! virtiofsd, and what the shim mounts into it: each container's rootfs and
//! the bind mounts and volumes of its spec.
//!
//! virtiofsd runs in its own mount namespace, created when it starts; mounts
//! made later (every container's rootfs) reach it only because the shared
//! directory is a mount point with shared propagation from the start.

use std::path::{Path, PathBuf};

use containerd_shim::protos::api::Mount;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::{Result, ShimError};

/// Where the guest agent mounts the shared directory (the agent accepts
/// targets below its sandbox's `shared` directory).
pub const GUEST_SHARED_DIR: &str = "/run/hull-agent/sandbox/shared/hullfs";

fn mount_error(what: String) -> impl FnOnce(nix::errno::Errno) -> ShimError {
    move |errno| ShimError::Io {
        context: what,
        source: errno.into(),
    }
}

/// The shared directory: a bind mount of itself, with shared propagation.
#[derive(Debug)]
pub struct SharedDir {
    host: PathBuf,
}

impl SharedDir {
    pub fn create(host: &Path) -> Result<Self> {
        std::fs::create_dir_all(host)
            .map_err(ShimError::io(format!("creating {}", host.display())))?;
        mount(
            Some(host),
            host,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mount_error(format!(
            "bind-mounting {} on itself",
            host.display()
        )))?;
        let shared = Self {
            host: host.to_owned(),
        };
        mount(
            None::<&str>,
            host,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(mount_error(format!(
            "making {} a shared mount",
            host.display()
        )))?;
        Ok(shared)
    }

    /// A shared directory that is a plain directory, for unit tests that
    /// must not mount anything.
    #[cfg(test)]
    pub fn for_tests(host: &Path) -> std::mem::ManuallyDrop<Self> {
        std::mem::ManuallyDrop::new(Self {
            host: host.to_owned(),
        })
    }

    pub fn host(&self) -> &Path {
        &self.host
    }

    /// A container's directory in the shared directory, on the host.
    pub fn container_dir(&self, container_id: &str) -> PathBuf {
        self.host.join(container_id)
    }

    /// The guest's path for `host_path`, which lies in the shared directory.
    pub fn guest_path(&self, host_path: &Path) -> Option<String> {
        let relative = host_path.strip_prefix(&self.host).ok()?;
        Some(
            Path::new(GUEST_SHARED_DIR)
                .join(relative)
                .display()
                .to_string(),
        )
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        // Lazily: a straggling user (virtiofsd) must not keep it alive.
        if let Err(err) = umount2(&self.host, MntFlags::MNT_DETACH) {
            tracing::warn!(%err, dir = %self.host.display(), "unmounting the shared directory");
        }
        let _ = std::fs::remove_dir_all(&self.host);
    }
}

/// What the shim mounted for one container, unmounted in reverse order.
#[derive(Debug, Default)]
pub struct ContainerMounts {
    mounted: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl ContainerMounts {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(ShimError::io(format!("creating {}", dir.display())))?;
        Ok(Self {
            mounted: Vec::new(),
            dir: Some(dir.to_owned()),
        })
    }

    /// Mounts the container's rootfs at `target`: containerd's mounts (an
    /// overlay from the snapshotter, usually), or else `root`, the spec's
    /// root directory (`ctr run --rootfs`, a bundle with its own rootfs).
    pub fn rootfs(&mut self, mounts: &[Mount], root: &Path, target: &Path) -> Result<()> {
        std::fs::create_dir_all(target)
            .map_err(ShimError::io(format!("creating {}", target.display())))?;
        if mounts.is_empty() {
            return self.bind(root, target, false);
        }
        for (index, rootfs) in mounts.iter().enumerate() {
            let source = (!rootfs.source.is_empty()).then_some(rootfs.source.as_str());
            containerd_shim::mount::mount_rootfs(
                Some(rootfs.type_.as_str()).filter(|t| !t.is_empty()),
                source,
                &rootfs.options,
                target,
            )
            .map_err(|err| ShimError::invalid(format!("rootfs[{index}]"), err.to_string()))?;
            self.mounted.push(target.to_owned());
        }
        Ok(())
    }

    /// Bind-mounts `source` (a file or a directory) at `target`, read-only
    /// if asked: the guest then cannot write through virtio-fs either.
    pub fn bind(&mut self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        let metadata = std::fs::metadata(source).map_err(ShimError::io(format!(
            "bind mount source {}",
            source.display()
        )))?;
        if metadata.is_dir() {
            std::fs::create_dir_all(target)
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(ShimError::io(format!("creating {}", parent.display())))?;
            }
            std::fs::File::create(target).map(drop)
        }
        .map_err(ShimError::io(format!("creating {}", target.display())))?;
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(mount_error(format!(
            "binding {} to {}",
            source.display(),
            target.display()
        )))?;
        self.mounted.push(target.to_owned());
        if read_only {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(mount_error(format!(
                "making {} read-only",
                target.display()
            )))?;
        }
        Ok(())
    }

    /// Unmounts everything, last first, and removes the container's
    /// directory. Safe to call more than once.
    pub fn release(&mut self) {
        while let Some(target) = self.mounted.pop() {
            if let Err(err) = umount2(&target, MntFlags::MNT_DETACH) {
                tracing::warn!(%err, target = %target.display(), "unmounting");
            }
        }
        if let Some(dir) = self.dir.take()
            && let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%err, dir = %dir.display(), "removing a container's shared directory");
        }
    }
}

impl Drop for ContainerMounts {
    fn drop(&mut self) {
        self.release();
    }
}

/// Unmounts everything mounted at or below `dir` (deepest first), for the
/// cleanup after a shim crash, when nothing in memory says what was mounted.
pub fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut targets: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(unescape_mountinfo)
        .filter(|target| target.starts_with(dir))
        .collect();
    targets.sort_by_key(|target| std::cmp::Reverse(target.components().count()));
    for target in targets {
        let _ = umount2(&target, MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(byte) => out.push(char::from(byte)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn guest_paths_follow_the_shared_directory() {
        let shared = SharedDir::for_tests(Path::new("/run/hull/pod/shared"));
        assert_eq!(
            shared
                .guest_path(Path::new("/run/hull/pod/shared/c1/rootfs"))
                .as_deref(),
            Some("/run/hull-agent/sandbox/shared/hullfs/c1/rootfs")
        );
        assert_eq!(shared.guest_path(Path::new("/etc/hosts")), None);
    }
}
