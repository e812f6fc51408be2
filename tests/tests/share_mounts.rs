//! The pod's shared directory and the descriptor-based mount helpers, on
//! the host's real mount table (root only, as the shim runs): the guest's
//! view is read-only at the top and receives the shim's mounts with their
//! own flags, read-only binds are read-only all the way down and keep
//! nosuid/nodev/noexec, and no symlink planted in the tree leads a mount,
//! an unmount or a file creation out of it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use hull_shim::mounts::{ContainerMounts, SharedDir, fd, mounts_below};
use hull_shim::pod_dir::PodDir;
use nix::mount::{MsFlags, mount};
use nix::sys::statvfs::{FsFlags, statvfs};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests mount: run them as root"
    );
}

/// A temporary directory whose mounts are all undone when it goes.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Self {
        require_root();
        Self(
            tempfile::Builder::new()
                .prefix("hull-share-")
                .tempdir_in("/tmp")
                .expect("tempdir"),
        )
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn tmpfs(&self, name: &str, flags: MsFlags) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        mount(Some("t"), &path, Some("tmpfs"), flags, Some("size=1m")).expect("tmpfs");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut mounts = mounts_below(self.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for _ in 0..4 {
            for target in &mounts {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn errno(result: std::io::Result<()>) -> Option<i32> {
    result.err().and_then(|err| err.raw_os_error())
}

#[test]
fn a_read_only_bind_is_read_only_all_the_way_down_and_keeps_its_flags() {
    let scratch = Scratch::new();
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let source = scratch.tmpfs("source", locked);
    scratch.tmpfs("source/sub", MsFlags::empty());
    let root = fd::open_dir(scratch.path()).expect("open");
    let target = fd::mkdir_all_beneath(root.as_fd(), Path::new("target")).expect("mkdir");
    let tree = fd::clone_tree(&source, true).expect("open_tree");
    fd::make_read_only(tree.as_fd()).expect("mount_setattr");
    fd::attach(tree.as_fd(), target.as_fd()).expect("move_mount");

    let target = scratch.path().join("target");
    for dir in [target.clone(), target.join("sub")] {
        assert_eq!(
            errno(std::fs::write(dir.join("x"), "x")),
            Some(nix::libc::EROFS),
            "{} is writable",
            dir.display()
        );
    }
    let flags = statvfs(&target).expect("statvfs").flags();
    for flag in [
        FsFlags::ST_RDONLY,
        FsFlags::ST_NOSUID,
        FsFlags::ST_NODEV,
        FsFlags::ST_NOEXEC,
    ] {
        assert!(flags.contains(flag), "{flag:?} is lost: {flags:?}");
    }
    // The source itself stays writable.
    std::fs::write(source.join("sub/x"), "x").expect("the source is writable");
}

#[test]
fn an_unmount_does_not_follow_a_symlink() {
    let scratch = Scratch::new();
    let canary = scratch.tmpfs("canary", MsFlags::empty());
    let link = scratch.path().join("link");
    std::os::unix::fs::symlink(&canary, &link).expect("link");
    assert!(fd::unmount(&link).is_err(), "the link was unmounted");
    assert_eq!(mounts_below(&canary), [canary]);
}

#[test]
fn the_view_is_read_only_at_the_top_and_receives_the_shims_mounts() {
    let scratch = Scratch::new();
    let pod = PodDir::at(scratch.path().join("pod"));
    std::fs::create_dir(pod.path()).expect("pod dir");
    let volume = scratch.tmpfs("volume", MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
    let file = scratch.path().join("file");
    std::fs::write(&file, "file\n").expect("file");

    let shared = SharedDir::create(&pod).expect("shared dir");
    assert_eq!(shared.view(), pod.shared());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(pod.host_only())
            .expect("rw")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "the host-only directory is open");
    let mut mounts = ContainerMounts::new(&shared, "c1").expect("container dir");
    let guest = mounts.volume(0, &volume, false).expect("rw volume");
    assert_eq!(guest, "/run/hull-agent/sandbox/shared/hullfs/c1/mounts/0");
    mounts.volume(1, &file, true).expect("ro file");

    let view = pod.shared();
    // The top and the container's directory: read-only.
    for path in [
        view.join("top"),
        view.join("c1/x"),
        view.join("c1/mounts/x"),
    ] {
        assert_eq!(
            errno(std::fs::write(&path, "x")),
            Some(nix::libc::EROFS),
            "{} is writable",
            path.display()
        );
    }
    assert_eq!(
        errno(std::fs::rename(view.join("c1"), view.join("c2"))),
        Some(nix::libc::EROFS)
    );
    // The volumes: in the view with their own flags.
    std::fs::write(view.join("c1/mounts/0/x"), "x").expect("the rw volume is writable");
    assert_eq!(std::fs::read(volume.join("x")).expect("read"), b"x");
    assert_eq!(
        std::fs::read_to_string(view.join("c1/mounts/1")).expect("read"),
        "file\n"
    );
    assert_eq!(
        errno(std::fs::write(view.join("c1/mounts/1"), "y")),
        Some(nix::libc::EROFS)
    );

    mounts.release();
    assert!(
        !pod.host_only().join("c1").exists() && !view.join("c1").exists(),
        "the container's directory stays"
    );
    drop(shared);
    assert_eq!(mounts_below(pod.path()), Vec::<PathBuf>::new());
    assert_eq!(std::fs::read_to_string(&file).expect("file"), "file\n");
    assert_eq!(mounts_below(&volume), [volume]);
}

#[test]
fn links_planted_in_the_tree_lead_no_mount_out_of_it() {
    let scratch = Scratch::new();
    let pod = PodDir::at(scratch.path().join("pod"));
    std::fs::create_dir(pod.path()).expect("pod dir");
    let canary_dir = scratch.tmpfs("canary", MsFlags::empty());
    let canary_file = scratch.path().join("canary-file");
    std::fs::write(&canary_file, "canary\n").expect("canary");
    let volume = scratch.path().join("volume");
    std::fs::create_dir(&volume).expect("volume");

    let shared = SharedDir::create(&pod).expect("shared dir");
    // As if the guest could write the tree: links where the shim creates.
    let c1 = pod.host_only().join("c1");
    std::fs::create_dir_all(c1.join("mounts")).expect("mkdir");
    std::os::unix::fs::symlink(&canary_dir, c1.join("rootfs")).expect("link");
    std::os::unix::fs::symlink(&canary_dir, c1.join("mounts/0")).expect("link");
    std::os::unix::fs::symlink(&canary_file, c1.join("mounts/1")).expect("link");
    let mut mounts = ContainerMounts::new(&shared, "c1").expect("container dir");
    let err = mounts.rootfs(&[], &volume).expect_err("rootfs on a link");
    assert!(err.to_string().contains("c1/rootfs"), "{err}");
    mounts
        .volume(0, &volume, false)
        .expect_err("volume on a link");
    mounts
        .volume(1, &canary_file, false)
        .expect_err("file on a link");
    mounts.release();
    assert_eq!(
        std::fs::read_to_string(&canary_file).expect("read"),
        "canary\n"
    );
    assert_eq!(mounts_below(&canary_dir), std::slice::from_ref(&canary_dir));
    assert_eq!(mounts_below(pod.path()).len(), 2, "rw and its view");
    drop(shared);
    assert_eq!(mounts_below(pod.path()), Vec::<PathBuf>::new());
}
