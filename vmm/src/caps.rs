//! Giving up every capability once the VMM is set up.
//!
//! Capabilities belong to each thread, so this runs while the calling thread
//! is the process's only one: every thread started afterwards (the control
//! channel's, the vCPUs', the devices') inherits the empty sets.

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
}

/// Empties the ambient, bounding (when this process may: it takes
/// CAP_SETPCAP), inheritable, effective and permitted sets, and sets
/// no_new_privs so no execve could bring any back.
pub fn drop_all() -> Result<(), CapsError> {
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
