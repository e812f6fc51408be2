//! What the agent does as PID 1 of the guest: mount the kernel filesystems
//! before serving, and power the machine off after.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: Errno,
    },
    #[error("creating {path}: {source}")]
    CreateDir {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

struct KernelMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: each target lies on a filesystem mounted before it.
const KERNEL_MOUNTS: &[KernelMount] = &[
    KernelMount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    KernelMount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    KernelMount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    KernelMount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    KernelMount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    KernelMount {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    KernelMount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and cgroup2, and
/// enables every cgroup controller for the containers below the root.
pub fn setup() -> Result<(), InitError> {
    for mount in KERNEL_MOUNTS {
        std::fs::create_dir_all(mount.target).map_err(|source| InitError::CreateDir {
            path: mount.target,
            source,
        })?;
        match nix::mount::mount(
            Some(mount.fstype),
            mount.target,
            Some(mount.fstype),
            mount.flags,
            mount.data,
        ) {
            // The kernel may have mounted devtmpfs itself.
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => {
                return Err(InitError::Mount {
                    fstype: mount.fstype,
                    target: mount.target,
                    source,
                });
            }
        }
    }
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    enable_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    Ok(())
}

fn enable_cgroup_controllers(root: &Path) {
    let Ok(available) = std::fs::read_to_string(root.join("cgroup.controllers")) else {
        return;
    };
    for controller in available.split_whitespace() {
        if let Err(err) = std::fs::write(
            root.join("cgroup.subtree_control"),
            format!("+{controller}"),
        ) {
            tracing::warn!(controller, %err, "cannot enable cgroup controller");
        }
    }
}

/// Flushes the filesystems and powers the guest off.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!(?err, "power-off failed");
    std::process::exit(1)
}
