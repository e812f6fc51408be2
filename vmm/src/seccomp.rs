//! The seccomp filter `hull-vmm` runs under once it is set up.
//!
//! It allows the system calls the running VMM makes and ends the whole
//! process by SIGSYS on any other, after [`report`] writes the call's
//! number to stderr: KVM and device
//! ioctls, epoll and eventfds, reads and writes, memory management, futexes,
//! clocks, signals for the vCPU kick, new threads (devices start theirs when
//! the guest activates them), and the Unix-socket calls of the control
//! channel, hybrid vsock and the vhost-user front end. `socket` and
//! `socketpair` are allowed for `AF_UNIX` only. Nothing opens a file, binds
//! or listens after set-up, and nothing may `execve` or fork.
//!
//! [`install`] puts it on every thread of the process at once (TSYNC);
//! threads started later inherit it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Install(#[source] seccompiler::Error),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
}

/// Allowed whatever their arguments.
const ALLOWED: &[libc::c_long] = &[
    // Files, sockets, eventfds and taps that are already open.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_ioctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    // The control channel, hybrid vsock, vhost-user.
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // Removing the sockets this process bound, when it ends.
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // Memory.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    // Threads and their synchronisation.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_prctl,
    libc::SYS_getrandom,
    // Signals: the vCPU kick, and what std does on a panic or an abort.
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    // Time.
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    // The end.
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Allowed for Unix sockets only (the first argument is the domain).
const UNIX_ONLY: &[libc::c_long] = &[libc::SYS_socket, libc::SYS_socketpair];

/// The filter, compiled to BPF for this machine.
pub fn filter() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    for &nr in UNIX_ONLY {
        let unix = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )
        .and_then(|condition| SeccompRule::new(vec![condition]))
        .map_err(SeccompError::Build)?;
        rules.insert(nr, vec![unix]);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(SeccompError::Build)?;
    SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
        .and_then(BpfProgram::try_from)
        .map_err(SeccompError::Build)
}

/// Installs the SIGSYS reporter, sets no_new_privs and installs `filter`
/// on every thread of the process.
pub fn install(filter: &BpfProgram) -> Result<(), SeccompError> {
    report::install_handler().map_err(SeccompError::Handler)?;
    seccompiler::apply_filter_all_threads(filter).map_err(SeccompError::Install)
}

mod report;
#[cfg(test)]
mod tests;
