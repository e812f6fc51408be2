//! Path operations on descriptors, for trees the shim must not be fooled
//! in: every path is resolved beneath a directory the shim holds open, with
//! no symlink and no `..` escaping it (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`), and mounts are made with the mount API on those
//! descriptors (`open_tree`, `mount_setattr`, `move_mount`), so that
//! nothing is looked up again by name between the check and the use.
//!
//! Each `unsafe` block is a raw system call that nix 0.29 does not wrap.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, umount2};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How every lookup below resolves: beneath the directory, and through no
/// symlink of any kind.
fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful system call that
    // creates a descriptor; nothing else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Refuses what cannot be a path below a directory: absolute paths, `..`,
/// and the empty path.
fn check_relative(relative: &Path) -> io::Result<()> {
    let plain = relative.components().next().is_some()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a plain relative path", relative.display()),
        ))
    }
}

/// Opens a directory the host owns (the pod's host-only directory), not
/// following a symlink in its last component.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(owned(fd))
}

/// Opens `relative` beneath `dir`, refusing any symlink on the way and any
/// escape from `dir`.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    relative: &Path,
    flags: OFlag,
    mode: Mode,
) -> io::Result<OwnedFd> {
    check_relative(relative)?;
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(mode)
        .resolve(beneath());
    let fd = openat2(dir.as_raw_fd(), relative, how)?;
    Ok(owned(fd))
}

/// Creates the directories of `relative` beneath `dir` that do not exist yet
/// (mode 0755: what keeps others out is `dir`) and opens the last one
/// (`O_PATH`). An existing component that is a symlink or not a directory
/// fails the call.
pub fn mkdir_all_beneath(dir: BorrowedFd<'_>, relative: &Path) -> io::Result<OwnedFd> {
    check_relative(relative)?;
    let mut current: Option<OwnedFd> = None;
    for component in relative.components() {
        let parent = current.as_ref().map_or(dir, |fd| fd.as_fd());
        match mkdirat(
            Some(parent.as_raw_fd()),
            component.as_os_str(),
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno.into()),
        }
        let next = open_beneath(
            parent,
            Path::new(component.as_os_str()),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )?;
        current = Some(next);
    }
    current.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Creates an empty regular file at `relative` beneath `dir` (its parents
/// too), for a file bind mount to land on. An existing file is opened as it
/// is: never truncated, and never through a symlink.
pub fn create_file_beneath(dir: BorrowedFd<'_>, relative: &Path) -> io::Result<OwnedFd> {
    check_relative(relative)?;
    let (parent, name) = split(relative)?;
    let parent = match parent {
        Some(parent) => Some(mkdir_all_beneath(dir, parent)?),
        None => None,
    };
    let parent = parent.as_ref().map_or(dir, |fd| fd.as_fd());
    open_beneath(
        parent,
        name,
        OFlag::O_CREAT | OFlag::O_RDONLY,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
}

/// Removes the file or empty directory at `relative` beneath `dir`; what is
/// already gone is no error. Never recursive: a directory that still holds
/// something (a mount that did not go) stays, and says so.
pub fn remove_beneath(dir: BorrowedFd<'_>, relative: &Path, is_dir: bool) -> io::Result<()> {
    check_relative(relative)?;
    let (parent, name) = split(relative)?;
    let parent = match parent {
        Some(parent) => match open_beneath(
            dir,
            parent,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        },
        None => None,
    };
    let parent = parent.as_ref().map_or(dir, |fd| fd.as_fd());
    let flag = if is_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    match unlinkat(Some(parent.as_raw_fd()), name, flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

fn split(relative: &Path) -> io::Result<(Option<&Path>, &Path)> {
    let name = relative
        .file_name()
        .map(Path::new)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let parent = relative
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty());
    Ok((parent, name))
}

/// The path through which a descriptor's file can be named to a system call
/// that takes only paths (`mount(2)` of a file system): the magic link pins
/// what the descriptor holds, whatever happens to names meanwhile.
pub fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// A detached copy of the mount at `source` (with its submounts if
/// `recursive`, as `rbind` does), to be attached with [`attach`].
pub fn clone_tree(source: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let path = CString::new(source.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: open_tree(2) reads the NUL-terminated `path`, which outlives
    // the call, and returns a new descriptor or -1; no memory is written.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    let fd = Errno::result(fd)?;
    Ok(owned(fd as std::os::fd::RawFd))
}

/// Makes every mount of the tree `tree` read-only, leaving its other flags
/// (nosuid, nodev, noexec, atime) as they are.
pub fn make_read_only(tree: BorrowedFd<'_>) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: mount_setattr(2) reads `attr` (of the size passed) and the
    // empty NUL-terminated path, both of which outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(result)?;
    Ok(())
}

/// Attaches the detached tree `tree` on the file or directory `target`
/// holds open.
pub fn attach(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    let empty = c"";
    // SAFETY: move_mount(2) reads two empty NUL-terminated paths, which
    // outlive the call; both descriptors are borrowed, so open.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(result)?;
    Ok(())
}

/// Lazily unmounts what is mounted at `target`, not following a symlink
/// there: a link planted where a mount was cannot aim the unmount elsewhere.
pub fn unmount(target: &Path) -> nix::Result<()> {
    umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = open_dir(dir.path()).expect("open");
        (dir, fd)
    }

    #[test]
    fn directories_are_created_beneath_and_reopened() {
        let (tmp, fd) = dir();
        mkdir_all_beneath(fd.as_fd(), Path::new("c1/mounts/0")).expect("mkdir");
        assert!(tmp.path().join("c1/mounts/0").is_dir());
        // Again: what exists is reused.
        mkdir_all_beneath(fd.as_fd(), Path::new("c1/mounts")).expect("again");
    }

    #[test]
    fn a_symlink_on_the_way_is_refused_wherever_it_points() {
        let (tmp, fd) = dir();
        let outside = tempfile::tempdir().expect("outside");
        std::fs::create_dir(tmp.path().join("c1")).expect("c1");
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("c1/mounts")).expect("link");
        std::os::unix::fs::symlink("rootfs-real", tmp.path().join("c1/rootfs")).expect("link");
        std::fs::create_dir(tmp.path().join("c1/rootfs-real")).expect("real");
        for path in ["c1/mounts/0", "c1/mounts", "c1/rootfs"] {
            let err = mkdir_all_beneath(fd.as_fd(), Path::new(path)).expect_err(path);
            // ELOOP on the way, ENOTDIR for a link as the last component.
            assert!(
                matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
                "{path}: {err}"
            );
        }
        let err = create_file_beneath(fd.as_fd(), Path::new("c1/mounts/1")).expect_err("file");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR), "{err}");
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("outside").count(),
            0,
            "nothing was created through the link"
        );
    }

    #[test]
    fn a_symlinked_file_is_neither_followed_nor_truncated() {
        let (tmp, fd) = dir();
        let outside = tempfile::tempdir().expect("outside");
        let canary = outside.path().join("canary");
        std::fs::write(&canary, "keep").expect("canary");
        std::fs::create_dir_all(tmp.path().join("c1/mounts")).expect("mkdir");
        std::os::unix::fs::symlink(&canary, tmp.path().join("c1/mounts/0")).expect("link");
        let err = create_file_beneath(fd.as_fd(), Path::new("c1/mounts/0")).expect_err("link");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert_eq!(std::fs::read_to_string(&canary).expect("read"), "keep");
        // A file that exists keeps its content too.
        std::fs::write(tmp.path().join("c1/mounts/1"), "data").expect("file");
        create_file_beneath(fd.as_fd(), Path::new("c1/mounts/1")).expect("open");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("c1/mounts/1")).expect("read"),
            "data"
        );
    }

    #[test]
    fn escapes_and_absolute_paths_are_refused() {
        let (_tmp, fd) = dir();
        for path in ["../x", "/etc", "a/../../x", ""] {
            assert!(
                mkdir_all_beneath(fd.as_fd(), Path::new(path)).is_err(),
                "{path}"
            );
            assert!(
                open_beneath(fd.as_fd(), Path::new(path), OFlag::O_PATH, Mode::empty()).is_err(),
                "{path}"
            );
        }
    }

    #[test]
    fn removal_is_one_entry_never_recursive_nor_through_links() {
        let (tmp, fd) = dir();
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("keep"), "x").expect("keep");
        std::fs::create_dir_all(tmp.path().join("c1/mounts/0")).expect("mkdir");
        std::fs::write(tmp.path().join("c1/mounts/0/busy"), "x").expect("busy");
        let err = remove_beneath(fd.as_fd(), Path::new("c1/mounts/0"), true).expect_err("busy");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{err}");
        // A link where a directory was: the link goes, not its target.
        std::fs::remove_dir_all(tmp.path().join("c1")).expect("clear");
        std::fs::create_dir(tmp.path().join("c1")).expect("c1");
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("c1/mounts")).expect("link");
        assert!(remove_beneath(fd.as_fd(), Path::new("c1/mounts/keep"), false).is_err());
        assert!(outside.path().join("keep").exists());
        remove_beneath(fd.as_fd(), Path::new("c1/gone"), true).expect("gone is fine");
        remove_beneath(fd.as_fd(), Path::new("nothing/here"), true).expect("gone parent");
    }
}
