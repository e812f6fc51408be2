//! Giving up every capability once the VMM is set up.
//!
//! Capabilities belong to each thread, so this runs while the calling thread
//! is the process's only one: every thread started afterwards (the control
//! channel's, the vCPUs', the devices') inherits the empty sets.
//!
//! With a [`RunAs`], the process also becomes that user and group (no
//! supplementary groups) before the capabilities go: root's files on the
//! host are then out of reach even for code that got past the seccomp
//! filter. Everything the VMM opens (/dev/kvm, the kernel, the console log,
//! the taps, the sockets it binds or connects to at set-up) is already
//! open; what it still reaches afterwards is the jail root (chowned to
//! it by [`crate::jail::enter`], so it can remove its sockets) and the
//! `<uds>_P` sockets the guest dials, which their owner must let it
//! connect to.

use caps::{CapSet, Capability};

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("dropping the {set} capabilities: {source}")]
    Drop {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    #[error(
        "{0} threads are running: capabilities are per thread, so they must be dropped before any other thread starts"
    )]
    OtherThreads(usize),
    #[error("counting this process's threads: {0}")]
    Threads(#[source] std::io::Error),
    #[error("becoming uid {uid} gid {gid} ({what}): {source}")]
    RunAs {
        uid: u32,
        gid: u32,
        what: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// The unprivileged user and group the VMM continues as. Neither may be 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Drops the groups, then the gid, then the uid (after which setgid
    /// would no longer be allowed). A uid change also clears the kernel's
    /// parent-death signal, which the jail arms again.
    fn become_it(self) -> Result<(), CapsError> {
        use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
        let fail = |what| {
            move |source| CapsError::RunAs {
                uid: self.uid,
                gid: self.gid,
                what,
                source,
            }
        };
        if self.uid == 0 || self.gid == 0 {
            return Err(fail("0 is root")(nix::Error::EINVAL));
        }
        let gid = Gid::from_raw(self.gid);
        let uid = Uid::from_raw(self.uid);
        setgroups(&[]).map_err(fail("setgroups"))?;
        setresgid(gid, gid, gid).map_err(fail("setresgid"))?;
        setresuid(uid, uid, uid).map_err(fail("setresuid"))?;
        crate::jail::rearm_death_signal().map_err(fail("PR_SET_PDEATHSIG"))
    }
}

/// Empties the ambient, bounding (when this process may: it takes
/// CAP_SETPCAP), inheritable, effective and permitted sets, becomes
/// `run_as` if given, and sets no_new_privs so no execve could bring any
/// capability back.
pub fn drop_all(run_as: Option<RunAs>) -> Result<(), CapsError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(CapsError::Threads)?
        .count();
    if threads != 1 {
        return Err(CapsError::OtherThreads(threads));
    }
    let drop = |set: &'static str, cset: CapSet| {
        caps::clear(None, cset).map_err(|source| CapsError::Drop { set, source })
    };
    drop("ambient", CapSet::Ambient)?;
    // Without CAP_SETPCAP the bounding set cannot shrink; with
    // no_new_privs and no execve allowed it could not be used anyway.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        drop("bounding", CapSet::Bounding)?;
    }
    // Needs CAP_SETUID and CAP_SETGID: before the sets below are emptied.
    // Leaving uid 0 empties the permitted and effective sets by itself.
    if let Some(run_as) = run_as {
        run_as.become_it()?;
    }
    drop("inheritable", CapSet::Inheritable)?;
    // The effective set must stay within the permitted one: it goes first.
    drop("effective", CapSet::Effective)?;
    drop("permitted", CapSet::Permitted)?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(CapsError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}
