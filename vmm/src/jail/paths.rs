//! The paths the VMM is given, and what they become inside the jail.

use std::path::{Path, PathBuf};

use super::JailError;

/// Where, inside the jail, the kernel and the initrd are bind-mounted.
pub(super) const KERNEL: &str = "/kernel";
pub(super) const INITRD: &str = "/initrd";

/// The console defaults to the VMM's standard output, reached through the
/// jail's own /proc.
const INHERITED_FD: &str = "/proc/self/fd/";

/// Every path the VMM opens, binds or connects to after entering the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPaths {
    pub root: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub console_log: PathBuf,
    pub api_socket: Option<PathBuf>,
    pub vsock_uds: Option<PathBuf>,
    pub fs_socket: Option<PathBuf>,
}

impl JailPaths {
    /// The root, resolved: an existing directory.
    pub(super) fn checked_root(&self) -> Result<PathBuf, JailError> {
        let root = self.root.canonicalize().map_err(|err| JailError::Root {
            path: self.root.clone(),
            reason: err.to_string(),
        })?;
        if !root.is_dir() {
            return Err(JailError::Root {
                path: self.root.clone(),
                reason: "not a directory".into(),
            });
        }
        if root == Path::new("/") {
            return Err(JailError::Root {
                path: self.root.clone(),
                reason: "the host's root is no jail".into(),
            });
        }
        Ok(root)
    }

    /// The same paths as seen from inside the jail at `root` (resolved):
    /// the kernel and initrd at their bind mounts, everything else where it
    /// already is under the root, which it must be.
    pub(super) fn inside(&self, root: &Path) -> Result<Self, JailError> {
        let under_root = |field, path: &Path| in_jail(root, field, path);
        let console_log = if self.console_log.starts_with(INHERITED_FD) {
            self.console_log.clone()
        } else {
            under_root("--console-log", &self.console_log)?
        };
        Ok(Self {
            root: PathBuf::from("/"),
            kernel: PathBuf::from(KERNEL),
            initrd: self.initrd.as_ref().map(|_| PathBuf::from(INITRD)),
            console_log,
            api_socket: self
                .api_socket
                .as_deref()
                .map(|path| under_root("--api-socket", path))
                .transpose()?,
            vsock_uds: self
                .vsock_uds
                .as_deref()
                .map(|path| under_root("--vsock-uds", path))
                .transpose()?,
            fs_socket: self
                .fs_socket
                .as_deref()
                .map(|path| under_root("--fs-socket", path))
                .transpose()?,
        })
    }
}

/// `path` as an absolute path inside the jail at `root`. Sockets may not
/// exist yet, so it is their directory that must be the root or below it.
fn in_jail(root: &Path, field: &'static str, path: &Path) -> Result<PathBuf, JailError> {
    let outside = || JailError::Outside {
        field,
        path: path.to_owned(),
        root: root.to_owned(),
    };
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(JailError::io("the current directory"))?
            .join(path)
    };
    let name = absolute.file_name().ok_or_else(outside)?;
    let parent = absolute
        .parent()
        .unwrap_or(Path::new("/"))
        .canonicalize()
        .map_err(JailError::io(format!("{field} {}", path.display())))?;
    let relative = parent.strip_prefix(root).map_err(|_| outside())?;
    Ok(Path::new("/").join(relative).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(root: &Path) -> JailPaths {
        JailPaths {
            root: root.to_owned(),
            kernel: "/boot/vmlinux".into(),
            initrd: Some("/boot/initrd".into()),
            console_log: "/proc/self/fd/1".into(),
            api_socket: Some(root.join("api.sock")),
            vsock_uds: Some(root.join("vsock.uds")),
            fs_socket: Some(root.join("fs.sock")),
        }
    }

    #[test]
    fn paths_under_the_root_are_rewritten_to_the_jails_root() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().canonicalize().expect("root");
        std::fs::create_dir(root.join("sub")).expect("sub");
        let mut given = paths(&root);
        given.console_log = root.join("sub/console.log");
        let inside = given.inside(&root).expect("inside");
        assert_eq!(inside.kernel, Path::new("/kernel"));
        assert_eq!(inside.initrd.as_deref(), Some(Path::new("/initrd")));
        assert_eq!(inside.api_socket.as_deref(), Some(Path::new("/api.sock")));
        assert_eq!(inside.vsock_uds.as_deref(), Some(Path::new("/vsock.uds")));
        assert_eq!(inside.fs_socket.as_deref(), Some(Path::new("/fs.sock")));
        assert_eq!(inside.console_log, Path::new("/sub/console.log"));
    }

    #[test]
    fn the_inherited_console_stays_and_a_missing_initrd_stays_missing() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().canonicalize().expect("root");
        let mut given = paths(&root);
        given.initrd = None;
        let inside = given.inside(&root).expect("inside");
        assert_eq!(inside.console_log, Path::new("/proc/self/fd/1"));
        assert_eq!(inside.initrd, None);
    }

    #[test]
    fn a_socket_outside_the_root_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().canonicalize().expect("root");
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        let mut given = paths(&root);
        given.vsock_uds = Some(elsewhere.path().join("vsock.uds"));
        let err = given.inside(&root).expect_err("outside");
        assert!(err.to_string().starts_with("--vsock-uds "), "{err}");
        assert!(err.to_string().contains("is not inside the jail"), "{err}");
        // `..` does not climb out either.
        given.vsock_uds = Some(root.join("../vsock.uds"));
        let err = given.inside(&root).expect_err("dot-dot");
        assert!(err.to_string().starts_with("--vsock-uds "), "{err}");
    }

    #[test]
    fn a_root_that_is_missing_a_file_or_the_hosts_root_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = JailPaths {
            root: dir.path().join("nope"),
            ..paths(dir.path())
        };
        let err = missing.checked_root().expect_err("missing");
        assert!(err.to_string().starts_with("--jail "), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, "").expect("file");
        let not_dir = JailPaths {
            root: file,
            ..paths(dir.path())
        };
        assert!(not_dir.checked_root().is_err());
        let host = JailPaths {
            root: "/".into(),
            ..paths(dir.path())
        };
        assert!(host.checked_root().is_err());
    }
}
