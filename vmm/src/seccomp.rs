//! The seccomp filter `hull-vmm` runs under once it is set up.
//!
//! It allows the system calls the running VMM makes and ends the whole
//! process by SIGSYS on any other, after [`report`] writes the call's
//! number to stderr: KVM and device
//! ioctls, epoll and eventfds, reads and writes, memory management, futexes,
//! clocks, signals for the vCPU kick, new threads (devices start theirs when
//! the guest activates them), and the Unix-socket calls of the control
//! channel, hybrid vsock and the vhost-user front end. Nothing opens a file,
//! binds or listens after set-up, and nothing may `execve` or fork.
//!
//! Where a call could do more than the VMM needs, its arguments are checked:
//! - `clone` only with the exact flags glibc's `pthread_create` passes
//!   ([`THREAD_CLONE_FLAGS`]): a fork, or a clone into new namespaces,
//!   kills the process;
//! - `clone3` fails with ENOSYS (its flags sit in memory, where seccomp
//!   cannot look), and glibc (2.34 and later) then falls back to `clone`;
//! - `ioctl` only for [`IOCTLS`], the requests the running VMM makes;
//! - `prctl` only for [`PRCTLS`];
//! - `socket` and `socketpair` only for `AF_UNIX`.
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
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
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

/// The flags glibc's `pthread_create` gives `clone` (`create_thread` in
/// nptl), which is how Rust's `std::thread::spawn` starts a thread: one
/// address space, file table, signal handlers and thread group, and no
/// exit signal. Anything else (a fork, `CLONE_NEW*`, `CLONE_VFORK`) traps.
pub const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// `KVM_RUN`, `_IO(KVMIO, 0x80)`: kvm-ioctls keeps its request numbers
/// private.
const KVM_RUN: u64 = (0xae << 8) | 0x80;

/// The ioctl requests the VMM makes once it runs. Every other KVM and tap
/// request (creating the VM and its vCPUs, registers, irqfds, the tap's
/// header size and offloads) is made during set-up, before the filter.
/// - `KVM_RUN`: each vCPU thread entering the guest (the kick that makes it
///   leave is a signal plus `immediate_exit` in shared memory, no ioctl);
/// - `FIONBIO`: std's `set_nonblocking`, on the streams the control channel
///   and hybrid vsock accept and connect while the guest runs.
pub const IOCTLS: &[u64] = &[KVM_RUN, libc::FIONBIO];

/// The prctl options the VMM uses once it runs: `PR_SET_NAME`, with which
/// std names each thread it starts (vCPUs, devices).
pub const PRCTLS: &[u64] = &[libc::PR_SET_NAME as u64];

fn condition(arg: u8, len: SeccompCmpArgLen, value: u64) -> Result<SeccompRule, SeccompError> {
    SeccompCondition::new(arg, len, SeccompCmpOp::Eq, value)
        .and_then(|condition| SeccompRule::new(vec![condition]))
        .map_err(SeccompError::Build)
}

/// One rule per allowed value of argument `arg`: the call passes when any
/// of them matches.
fn one_of(
    arg: u8,
    len: SeccompCmpArgLen,
    values: &[u64],
) -> Result<Vec<SeccompRule>, SeccompError> {
    values
        .iter()
        .map(|&value| condition(arg, len.clone(), value))
        .collect()
}

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(SeccompError::Build)
}

/// The filter, compiled to BPF for this machine.
pub fn filter() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    for &nr in UNIX_ONLY {
        rules.insert(
            nr,
            one_of(0, SeccompCmpArgLen::Dword, &[libc::AF_UNIX as u64])?,
        );
    }
    // The flags are an unsigned long: all 64 bits must match.
    rules.insert(
        libc::SYS_clone,
        one_of(0, SeccompCmpArgLen::Qword, &[THREAD_CLONE_FLAGS])?,
    );
    // The kernel reads an ioctl's request and prctl's option as 32 bits.
    rules.insert(libc::SYS_ioctl, one_of(1, SeccompCmpArgLen::Dword, IOCTLS)?);
    rules.insert(libc::SYS_prctl, one_of(0, SeccompCmpArgLen::Dword, PRCTLS)?);
    // Passed here, answered by [`clone3_filter`]: seccomp runs every
    // installed filter and the ENOSYS answer wins over this Allow.
    rules.insert(libc::SYS_clone3, Vec::new());
    SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch()?)
        .and_then(BpfProgram::try_from)
        .map_err(SeccompError::Build)
}

/// Answers `clone3` with ENOSYS and lets everything else through to
/// [`filter`]. A separate filter because a seccompiler filter has one action
/// for every matched call.
pub fn clone3_filter() -> Result<BpfProgram, SeccompError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .and_then(BpfProgram::try_from)
    .map_err(SeccompError::Build)
}

/// The programs [`install`] puts on the process.
#[derive(Debug)]
pub struct Filters {
    clone3: BpfProgram,
    main: BpfProgram,
}

/// Both filters, compiled to BPF for this machine.
pub fn filters() -> Result<Filters, SeccompError> {
    Ok(Filters {
        clone3: clone3_filter()?,
        main: filter()?,
    })
}

/// Installs the SIGSYS reporter, sets no_new_privs and installs `filters`
/// on every thread of the process: the clone3 one first, since the main
/// one then forbids `seccomp` itself.
pub fn install(filters: &Filters) -> Result<(), SeccompError> {
    report::install_handler().map_err(SeccompError::Handler)?;
    seccompiler::apply_filter_all_threads(&filters.clone3).map_err(SeccompError::Install)?;
    seccompiler::apply_filter_all_threads(&filters.main).map_err(SeccompError::Install)
}

mod report;
#[cfg(test)]
mod tests;
