//! What the agent does as PID 1 of the guest: mount the kernel filesystems
//! before serving, and end the machine after.

use std::os::unix::process::CommandExt;
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
    #[error("moving off the initramfs: {step}: {source}")]
    Reroot {
        step: &'static str,
        #[source]
        source: std::io::Error,
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

/// Set in the environment of the agent re-executed from its tmpfs root.
const REROOTED: &str = "HULL_AGENT_REROOTED";

/// Moves the root filesystem from the initramfs to a tmpfs and re-executes
/// /init there, keeping PID 1.
///
/// The initramfs is the kernel's `rootfs`, which cannot be unmounted, so
/// `pivot_root` refuses it: a container could not be jailed by pivot_root
/// below it. From a tmpfs root it can. Returns only when already re-rooted.
pub fn leave_initramfs() -> Result<(), InitError> {
    if std::env::var_os(REROOTED).is_some() {
        return Ok(());
    }
    let failed =
        |step: &'static str| move |source: std::io::Error| InitError::Reroot { step, source };
    std::fs::create_dir_all("/newroot").map_err(failed("creating /newroot"))?;
    nix::mount::mount(
        Some("tmpfs"),
        "/newroot",
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|errno| failed("mounting a tmpfs on /newroot")(errno.into()))?;
    for dir in ["dev", "proc", "sys", "run", "tmp", "etc"] {
        std::fs::create_dir_all(Path::new("/newroot").join(dir))
            .map_err(failed("creating directories"))?;
    }
    std::fs::copy("/init", "/newroot/init").map_err(failed("copying /init"))?;
    std::env::set_current_dir("/newroot").map_err(failed("entering /newroot"))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|errno| failed("moving /newroot to /")(errno.into()))?;
    nix::unistd::chroot(".").map_err(|errno| failed("chroot")(errno.into()))?;
    std::env::set_current_dir("/").map_err(failed("entering the new root"))?;
    let err = std::process::Command::new("/init")
        .env(REROOTED, "1")
        .exec();
    Err(InitError::Reroot {
        step: "re-executing /init",
        source: err,
    })
}

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

/// Flushes the filesystems and ends the guest.
///
/// Hull's VMMs treat a guest reset as the end of the VM (QEMU runs with
/// `-no-reboot`, and the kernel resets by triple fault, `reboot=t`), as
/// Firecracker does. A reset works on every machine model, while ACPI
/// power-off needs sleep-state support a minimal guest kernel lacks: without
/// it, RB_POWER_OFF silently halts and the VM never exits.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    tracing::error!(?err, "reset failed");
    std::process::exit(1)
}
