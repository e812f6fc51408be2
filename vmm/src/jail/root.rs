//! The jail's root: the work directory, with the kernel, the initrd,
//! /dev/kvm, /dev/urandom and a /proc of the new PID namespace mounted in, made the root
//! of the private mount namespace.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::JailError;
use super::paths::{INITRD, JailPaths, KERNEL};

/// Builds the root at `root` (resolved) and moves into it. Runs in the new
/// mount namespace, so nothing mounted here shows on the host.
pub(super) fn build(root: &Path, paths: &JailPaths) -> Result<(), JailError> {
    // Mounts must not propagate back to the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(JailError::sys("making / private"))?;
    // pivot_root needs the new root to be a mount point.
    bind(root, root, MsFlags::empty())?;

    bind_file(&paths.kernel, &root.join(&KERNEL[1..]), "--kernel", true)?;
    if let Some(initrd) = &paths.initrd {
        bind_file(initrd, &root.join(&INITRD[1..]), "--initrd", true)?;
    }
    let dev = root.join("dev");
    mkdir(&dev)?;
    // virtio-rng reads /dev/urandom.
    for device in ["kvm", "urandom"] {
        let host = Path::new("/dev").join(device);
        bind_file(&host, &dev.join(device), &host.display().to_string(), false)?;
    }
    let proc = root.join("proc");
    mkdir(&proc)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(JailError::sys(format!(
        "mounting proc at {}",
        proc.display()
    )))?;

    // The old root goes away entirely: no path leads back to the host.
    nix::unistd::chdir(root).map_err(JailError::sys(format!("chdir {}", root.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(JailError::sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(JailError::sys("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(JailError::sys("chdir /"))?;
    Ok(())
}

fn bind(source: &Path, target: &Path, extra: MsFlags) -> Result<(), JailError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | extra,
        None::<&str>,
    )
    .map_err(JailError::sys(format!(
        "bind-mounting {} at {}",
        source.display(),
        target.display()
    )))
}

/// Binds the file at `source` onto an empty file at `target`, read-only if
/// asked (a bind's read-only flag takes a remount).
fn bind_file(source: &Path, target: &Path, field: &str, read_only: bool) -> Result<(), JailError> {
    std::fs::metadata(source).map_err(JailError::io(format!("{field} {}", source.display())))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map_err(JailError::io(format!("creating {}", target.display())))?;
    bind(source, target, MsFlags::empty())?;
    if read_only {
        bind(
            source,
            target,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), JailError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(JailError::io(format!("creating {}", path.display()))(err)),
    }
}
