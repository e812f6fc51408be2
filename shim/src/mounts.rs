//! The pod's shared directory on the host and what the shim mounts into it:
//! each container's rootfs and the bind mounts and volumes of its spec.
//!
//! Two directories of the pod directory ([`PodDir`]) hold the tree:
//! - `rw/`, host-only (0700, never exported): the shim makes every
//!   directory, file and mount there, through descriptors ([`fd`]), so that
//!   no name is followed through a symlink or out of the tree;
//! - `shared/`, what virtiofsd exports: a read-only bind of `rw/` that
//!   receives its mounts (it is a slave of `rw/`, which is shared). The
//!   guest can write neither its top level nor a container's directory,
//!   only inside each container's rootfs and read-write volumes, which are
//!   submounts with their own flags.
//!
//! virtiofsd runs in its own mount namespace, created when it starts;
//! mounts made later (every container's rootfs) reach it only because its
//! copy of `shared/` is a slave of `rw/`'s peer group from the start.

pub mod fd;
mod pod_volumes;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::protos::api::Mount;
use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sys::stat::Mode;

use crate::error::{Result, ShimError};
use crate::pod_dir::PodDir;
pub use pod_volumes::{GUEST_POD_TMPFS_DIR, GuestTmpfs, PodVolumes, propagates};

/// Where the guest agent mounts the shared directory (the agent accepts
/// targets below its sandbox's `shared` directory).
pub const GUEST_SHARED_DIR: &str = "/run/hull-agent/sandbox/shared/hullfs";

fn mount_error(what: String) -> impl FnOnce(nix::errno::Errno) -> ShimError {
    move |errno| ShimError::Io {
        context: what,
        source: errno.into(),
    }
}

/// The guest's path for `relative`, a path below the shared directory.
pub fn guest_path(relative: &Path) -> String {
    Path::new(GUEST_SHARED_DIR)
        .join(relative)
        .display()
        .to_string()
}

/// Mount options that would act on a mount point by name after the mount
/// (`mount_rootfs` changes propagation and remounts on the target path).
const NOT_ON_A_DESCRIPTOR: &[&str] = &[
    "remount",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "unbindable",
    "runbindable",
];

/// The pod's host-only directory and its read-only view for virtiofsd.
#[derive(Debug)]
pub struct SharedDir {
    host_only: PathBuf,
    view: PathBuf,
    /// `host_only`, held open: every path below it is resolved from here.
    root: OwnedFd,
    /// What this value mounted (the view, then `host_only`), for Drop.
    mounted: Vec<PathBuf>,
    /// The volumes whose mounts propagate, bound once for the whole pod.
    volumes: Arc<PodVolumes>,
}

impl SharedDir {
    /// Makes `rw/` a shared mount of itself and `shared/` a read-only slave
    /// bind of it. On failure, what was mounted is unmounted.
    pub fn create(pod: &PodDir) -> Result<Self> {
        let host_only = pod.host_only();
        let view = pod.shared();
        for (dir, mode) in [(&host_only, 0o700), (&view, 0o755)] {
            match std::fs::DirBuilder::new().mode(mode).create(dir) {
                Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(ShimError::io(format!("creating {}", dir.display()))(err));
                }
                _ => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(
                    ShimError::io(format!("setting the mode of {}", dir.display())),
                )?,
            }
        }
        let mut shared = Self {
            root: fd::open_dir(&host_only)
                .map_err(ShimError::io(format!("opening {}", host_only.display())))?,
            host_only: host_only.clone(),
            view: view.clone(),
            mounted: Vec::new(),
            volumes: Arc::default(),
        };
        bind(&host_only, &host_only, MsFlags::empty())?;
        shared.mounted.push(host_only.clone());
        // The bind mount, not the directory under it: a mount attached
        // below the directory itself would not propagate to the view.
        shared.root = fd::open_dir(&host_only)
            .map_err(ShimError::io(format!("opening {}", host_only.display())))?;
        propagate(&host_only, MsFlags::MS_SHARED, "shared")?;
        bind(&host_only, &view, MsFlags::empty())?;
        shared.mounted.insert(0, view.clone());
        // A slave receives rw/'s mounts and sends none back.
        propagate(&view, MsFlags::MS_SLAVE, "a slave")?;
        mount(
            None::<&str>,
            &view,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(mount_error(format!("making {} read-only", view.display())))?;
        Ok(shared)
    }

    /// What virtiofsd exports.
    pub fn view(&self) -> &Path {
        &self.view
    }

    /// Where the shim mounts.
    pub fn host_only(&self) -> &Path {
        &self.host_only
    }
}

fn bind(source: &Path, target: &Path, extra: MsFlags) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | extra,
        None::<&str>,
    )
    .map_err(mount_error(format!(
        "bind-mounting {} on {}",
        source.display(),
        target.display()
    )))
}

fn propagate(target: &Path, flag: MsFlags, what: &str) -> Result<()> {
    mount(None::<&str>, target, None::<&str>, flag, None::<&str>)
        .map_err(mount_error(format!("making {} {what}", target.display())))
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        self.volumes.release(self.root.as_fd(), &self.host_only);
        // Lazily: a straggling user (virtiofsd) must not keep it alive.
        for target in self.mounted.drain(..) {
            if let Err(err) = fd::unmount(&target) {
                tracing::warn!(%err, dir = %target.display(), "unmounting the shared directory");
            }
        }
        for dir in [&self.view, &self.host_only] {
            if let Err(err) = std::fs::remove_dir(dir)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%err, dir = %dir.display(), "removing the shared directory");
            }
        }
    }
}

/// What the shim made and mounted for one container under the host-only
/// directory, undone in reverse order.
#[derive(Debug)]
pub struct ContainerMounts {
    id: String,
    /// The host-only directory, held open (a duplicate of the pod's).
    root: OwnedFd,
    host_only: PathBuf,
    /// Mount points, relative to `host_only`, in mount order.
    mounted: Vec<PathBuf>,
    /// Files and directories made, relative to `host_only`, in order
    /// (`true` for a directory).
    created: Vec<(PathBuf, bool)>,
    /// The pod's volumes whose mounts propagate (see [`PodVolumes`]).
    pod_volumes: Arc<PodVolumes>,
    /// The pod's guest tmpfs that the spec binds.
    pod_tmpfs: Vec<GuestTmpfs>,
}

impl ContainerMounts {
    /// Makes the container's directory under the pod's host-only directory.
    pub fn new(shared: &SharedDir, container_id: &str) -> Result<Self> {
        let root = shared.root.try_clone().map_err(ShimError::io(
            "duplicating the shared directory's descriptor",
        ))?;
        let mut mounts = Self {
            id: container_id.to_owned(),
            root,
            host_only: shared.host_only.clone(),
            mounted: Vec::new(),
            created: Vec::new(),
            pod_volumes: shared.volumes.clone(),
            pod_tmpfs: Vec::new(),
        };
        mounts.make_dir(&PodDir::container(container_id))?;
        mounts.make_dir(&PodDir::container_mounts(container_id))?;
        Ok(mounts)
    }

    /// Container mounts over a plain directory, for unit tests that mount
    /// nothing.
    #[cfg(test)]
    pub fn for_tests(dir: &Path, container_id: &str) -> Self {
        Self {
            id: container_id.to_owned(),
            root: fd::open_dir(dir).expect("opening the test directory"),
            host_only: dir.to_owned(),
            mounted: Vec::new(),
            created: Vec::new(),
            pod_volumes: Arc::default(),
            pod_tmpfs: Vec::new(),
        }
    }

    fn make_dir(&mut self, relative: &Path) -> Result<OwnedFd> {
        let fd = fd::mkdir_all_beneath(self.root.as_fd(), relative)
            .map_err(ShimError::io(format!("creating {}", self.show(relative))))?;
        self.created.push((relative.to_owned(), true));
        Ok(fd)
    }

    fn make_file(&mut self, relative: &Path) -> Result<OwnedFd> {
        let fd = fd::create_file_beneath(self.root.as_fd(), relative)
            .map_err(ShimError::io(format!("creating {}", self.show(relative))))?;
        self.created.push((relative.to_owned(), false));
        Ok(fd)
    }

    fn show(&self, relative: &Path) -> String {
        self.host_only.join(relative).display().to_string()
    }

    /// Mounts the container's rootfs: containerd's mounts (an overlay from
    /// the snapshotter, usually), or else `root`, the spec's root directory
    /// (`ctr run --rootfs`, a bundle with its own rootfs). Returns the
    /// rootfs's path in the guest.
    pub fn rootfs(&mut self, mounts: &[Mount], root: &Path) -> Result<String> {
        let relative = PodDir::container_rootfs(&self.id);
        if mounts.is_empty() {
            self.bind(root, &relative, false)?;
            return Ok(guest_path(&relative));
        }
        let target = self.make_dir(&relative)?;
        for (index, rootfs) in mounts.iter().enumerate() {
            let field = format!("rootfs[{index}]");
            let option = |name: &str| rootfs.options.iter().any(|o| o == name);
            if rootfs.type_ == "bind" || option("bind") || option("rbind") {
                // A snapshotter's bind (the native one): on the descriptor,
                // read-only all the way down when asked.
                let source = Path::new(&rootfs.source);
                let tree = fd::clone_tree(source, option("rbind")).map_err(|err| {
                    ShimError::invalid(format!("{field}.source"), err.to_string())
                })?;
                if option("ro") {
                    fd::make_read_only(tree.as_fd())
                        .map_err(|err| ShimError::invalid(field.clone(), err.to_string()))?;
                }
                fd::attach(tree.as_fd(), target.as_fd())
                    .map_err(|err| ShimError::invalid(field.clone(), err.to_string()))?;
            } else {
                // A file system (overlay): mounted through the descriptor's
                // magic link, which pins the directory just made and checked
                // whatever its name leads to by now. A change of propagation
                // or a remount would name the directory under the new
                // mount, not the mount: none is taken.
                if let Some(flag) = rootfs
                    .options
                    .iter()
                    .find(|o| NOT_ON_A_DESCRIPTOR.contains(&o.as_str()))
                {
                    return Err(ShimError::invalid(
                        format!("{field}.options"),
                        format!("{flag:?} is not supported for a rootfs"),
                    ));
                }
                let source = (!rootfs.source.is_empty()).then_some(rootfs.source.as_str());
                containerd_shim::mount::mount_rootfs(
                    Some(rootfs.type_.as_str()).filter(|t| !t.is_empty()),
                    source,
                    &rootfs.options,
                    fd::proc_path(target.as_fd()),
                )
                .map_err(|err| ShimError::invalid(field, err.to_string()))?;
            }
            self.mounted.push(relative.clone());
        }
        Ok(guest_path(&relative))
    }

    /// Binds the spec's `mounts[index]` from `source` (a file or a
    /// directory, with its submounts), read-only if asked, recursively: the
    /// guest then cannot write through virtio-fs either. Returns the
    /// mount's path in the guest.
    pub fn volume(&mut self, index: usize, source: &Path, read_only: bool) -> Result<String> {
        let relative = PodDir::container_mount(&self.id, index);
        self.bind(source, &relative, read_only)?;
        Ok(guest_path(&relative))
    }

    /// Binds `source` once for the whole pod, for a mount whose
    /// propagation is shared or slave: every container that mounts it then
    /// mounts the same guest directory, where the agent makes mounts
    /// propagate between them. Returns its path in the guest.
    pub fn pod_volume(&mut self, source: &Path, read_only: bool) -> Result<String> {
        let relative =
            self.pod_volumes
                .bind(self.root.as_fd(), &self.host_only, source, read_only)?;
        Ok(guest_path(&relative))
    }

    /// The pod's guest tmpfs for a bind of `source`, a host tmpfs (see
    /// [`PodVolumes::tmpfs`]), or `None` when `source` is no tmpfs. Returns
    /// its path in the guest.
    pub fn pod_tmpfs(&mut self, source: &Path) -> Result<Option<String>> {
        let Some(tmpfs) = self.pod_volumes.tmpfs(source)? else {
            return Ok(None);
        };
        let target = tmpfs.target.clone();
        self.pod_tmpfs.push(tmpfs);
        Ok(Some(target))
    }

    /// The pod's guest tmpfs that the spec binds, for CreateContainer.
    pub fn take_pod_tmpfs(&mut self) -> Vec<GuestTmpfs> {
        std::mem::take(&mut self.pod_tmpfs)
    }

    fn bind(&mut self, source: &Path, relative: &Path, read_only: bool) -> Result<()> {
        let (tree, is_dir) = clone_source(source, read_only)?;
        let target = if is_dir {
            self.make_dir(relative)?
        } else {
            self.make_file(relative)?
        };
        fd::attach(tree.as_fd(), target.as_fd()).map_err(ShimError::io(format!(
            "binding {} to {}",
            source.display(),
            self.show(relative)
        )))?;
        self.mounted.push(relative.to_owned());
        Ok(())
    }

    /// Unmounts everything, last first, and removes what was made for the
    /// container, one entry at a time: never recursively, so that a mount
    /// that would not go keeps its content. Safe to call more than once.
    pub fn release(&mut self) {
        while let Some(relative) = self.mounted.pop() {
            // The tree is host-only; the check only makes sure that nothing
            // but a plain path below it is ever unmounted.
            if let Err(err) =
                fd::open_beneath(self.root.as_fd(), &relative, OFlag::O_PATH, Mode::empty())
            {
                tracing::warn!(%err, target = %self.show(&relative), "not unmounting");
                continue;
            }
            if let Err(err) = fd::unmount(&self.host_only.join(&relative)) {
                tracing::warn!(%err, target = %self.show(&relative), "unmounting");
            }
        }
        while let Some((relative, is_dir)) = self.created.pop() {
            if let Err(err) = fd::remove_beneath(self.root.as_fd(), &relative, is_dir) {
                tracing::warn!(%err, path = %self.show(&relative), "removing");
            }
        }
    }
}

impl Drop for ContainerMounts {
    fn drop(&mut self) {
        self.release();
    }
}

/// A detached copy of the mount tree at `source` (a file or a directory,
/// with its submounts), read-only recursively if asked, and whether it is a
/// directory.
fn clone_source(source: &Path, read_only: bool) -> Result<(OwnedFd, bool)> {
    let metadata = std::fs::metadata(source).map_err(ShimError::io(format!(
        "bind mount source {}",
        source.display()
    )))?;
    let tree = fd::clone_tree(source, true).map_err(ShimError::io(format!(
        "cloning the mount at {}",
        source.display()
    )))?;
    if read_only {
        fd::make_read_only(tree.as_fd()).map_err(ShimError::io(format!(
            "making the bind of {} read-only",
            source.display()
        )))?;
    }
    Ok((tree, metadata.is_dir()))
}

/// The mount points at or below `dir`, from this process's mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(unescape_mountinfo)
        .filter(|target| target.starts_with(dir))
        .collect()
}

/// Unmounts everything mounted at or below `dir` (deepest first), for the
/// cleanup after a shim crash, when nothing in memory says what was mounted.
/// Returns whether nothing is mounted there any more.
pub fn unmount_below(dir: &Path) -> bool {
    let mut targets = mounts_below(dir);
    targets.sort_by_key(|target| std::cmp::Reverse(target.components().count()));
    for target in targets {
        let _ = fd::unmount(&target);
    }
    mounts_below(dir).is_empty()
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
        assert_eq!(
            guest_path(&PodDir::container_rootfs("c1")),
            "/run/hull-agent/sandbox/shared/hullfs/c1/rootfs"
        );
        assert_eq!(
            guest_path(&PodDir::container_mount("c1", 2)),
            "/run/hull-agent/sandbox/shared/hullfs/c1/mounts/2"
        );
    }
}
