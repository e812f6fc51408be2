//! `hull-vmm --jail DIR`: the VMM runs as PID 1 of a PID namespace of its
//! own, in a mount namespace of its own whose root is DIR, in a network
//! namespace of its own (it has no use for one: taps arrive as open
//! descriptors, every socket it uses is a Unix socket in DIR), under tight
//! rlimits. Like Firecracker's jailer, but built in, so there is one
//! process to start and one binary to ship.
//!
//! DIR is the pod's VM work directory: it already holds the sockets the VMM
//! listens on and connects to (the control channel, hybrid vsock and its
//! `<uds>_P` ports, virtiofsd's). The kernel, the initrd and `/dev/kvm` are
//! bind-mounted in (and `/dev/urandom`, for virtio-rng), `/proc` is a fresh one of the new PID namespace, and the
//! paths the VMM was given are rewritten to the new root. Every mount lives
//! in the private mount namespace, so none outlives the VMM on the host.
//!
//! The process that was started stays outside as the jail's keeper: it
//! waits for the VMM and ends the way the VMM ended (same exit code, or the
//! same signal), kills it on SIGTERM, SIGINT or SIGHUP (PID 1 of a
//! namespace ignores signals it has no handler for), and the VMM dies with
//! it (`PR_SET_PDEATHSIG`), so `kill -9` of the started process still ends
//! the VM.
//!
//! With an owner ([`crate::caps::RunAs`]), DIR is chowned to it, so that the
//! VMM, once it has become that user, can still remove the sockets it
//! bound there.

mod keeper;
mod paths;
mod root;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;

pub use paths::JailPaths;

use crate::caps::RunAs;

/// The read end of the pipe whose write end only the keeper holds, kept
/// so that [`rearm_death_signal`] can check the keeper again.
static KEEPER_ALIVE: OnceLock<OwnedFd> = OnceLock::new();

/// What may not be raised inside the jail.
const MAX_OPEN_FILES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("--jail {}: {reason}", path.display())]
    Root { path: PathBuf, reason: String },
    #[error("{field} {} is not inside the jail {}", path.display(), root.display())]
    Outside {
        field: &'static str,
        path: PathBuf,
        root: PathBuf,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl JailError {
    fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Self {
        let what = what.into();
        move |source| Self::Sys { what, source }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// Enters the jail at `paths.root`. Returns only in the jailed VMM, with the
/// paths to use from now on; the calling process becomes the keeper and
/// exits when the VMM does. Must run while the process has one thread.
/// `owner` gets the jail's root directory (see the module's doc).
pub fn enter(paths: &JailPaths, owner: Option<RunAs>) -> Result<JailPaths, JailError> {
    let root = paths.checked_root()?;
    let inside = paths.inside(&root)?;
    // Only the keeper holds the write end: the VMM sees the pipe hang up
    // if the keeper is already gone when the death signal is armed.
    let (keeper_alive, keeper_holds) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(JailError::sys("a pipe to the keeper"))?;
    use nix::sched::CloneFlags;
    nix::sched::unshare(
        CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET,
    )
    .map_err(JailError::sys(
        "unsharing the PID, mount and network namespaces",
    ))?;
    // SAFETY: the caller runs this while the process has one thread (the
    // capability drop later checks it again), so the child may run any
    // code, not only async-signal-safe calls.
    match unsafe { nix::unistd::fork() }.map_err(JailError::sys("forking the jailed VMM"))? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(keeper_alive);
            keeper::keep(child, keeper_holds)
        }
        nix::unistd::ForkResult::Child => {
            drop(keeper_holds);
            die_with_keeper(keeper_alive)?;
            root::build(&root, paths)?;
            if let Some(owner) = owner {
                // The root is DIR itself (pivot_root).
                nix::unistd::chown(
                    "/",
                    Some(nix::unistd::Uid::from_raw(owner.uid)),
                    Some(nix::unistd::Gid::from_raw(owner.gid)),
                )
                .map_err(JailError::sys(format!(
                    "chowning {} to {}:{}",
                    root.display(),
                    owner.uid,
                    owner.gid
                )))?;
            }
            set_rlimits()?;
            Ok(inside)
        }
    }
}

/// The jailed VMM must not outlive its keeper, the process the shim tracks
/// and kills.
fn die_with_keeper(keeper_alive: OwnedFd) -> Result<(), JailError> {
    arm_death_signal(&keeper_alive).map_err(JailError::sys("PR_SET_PDEATHSIG"))?;
    // Only this process sets it, once.
    let _ = KEEPER_ALIVE.set(keeper_alive);
    Ok(())
}

fn arm_death_signal(keeper_alive: &OwnedFd) -> Result<(), nix::Error> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    // Had the keeper died before the line above, no signal would come.
    let mut fds = [PollFd::new(keeper_alive.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::ZERO)? > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// The kernel clears the parent-death signal when the process's
/// credentials change ([`crate::caps::RunAs`]): arms it again, and ends the
/// process if the keeper is already gone. Does nothing outside a jail.
pub fn rearm_death_signal() -> Result<(), nix::Error> {
    match KEEPER_ALIVE.get() {
        Some(keeper_alive) => arm_death_signal(keeper_alive),
        None => Ok(()),
    }
}

fn set_rlimits() -> Result<(), JailError> {
    use nix::sys::resource::{Resource, setrlimit};
    let limits = [
        (Resource::RLIMIT_NOFILE, MAX_OPEN_FILES, "RLIMIT_NOFILE"),
        // No core dump of guest memory on a crash.
        (Resource::RLIMIT_CORE, 0, "RLIMIT_CORE"),
        // KVM and vhost-user need no locked memory.
        (Resource::RLIMIT_MEMLOCK, 0, "RLIMIT_MEMLOCK"),
    ];
    for (resource, limit, name) in limits {
        setrlimit(resource, limit, limit).map_err(JailError::sys(format!("setting {name}")))?;
    }
    Ok(())
}
