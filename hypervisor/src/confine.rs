//! Confining a helper Hull does not build, from the moment it is spawned:
//! vhost-device-vsock parses the guest's vrings and has no sandbox of its
//! own. Between fork and exec (`pre_exec`) the child
//! - moves into mount, network, IPC and UTS namespaces of its own (it only
//!   uses Unix sockets on the filesystem, so a network namespace with no
//!   interface costs it nothing);
//! - empties its capability bounding set, drops its supplementary groups
//!   and becomes [`RunAs`] (not root: leaving uid 0 empties the permitted,
//!   effective and ambient sets, and with no file capabilities the exec
//!   brings none back);
//! - sets no_new_privs and installs a seccomp filter ([`Syscalls`]) that
//!   covers the exec itself, the dynamic loader and the helper's run. A call
//!   outside it kills the process (`SECCOMP_RET_KILL_PROCESS`).
//!
//! A PID namespace is not used: `unshare(CLONE_NEWPID)` only moves the
//! caller's children, and the helper starts none.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;

use hull_vmm::caps::RunAs;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::VmError;

/// The user and group helpers run as unless configured otherwise:
/// `nobody`/`nogroup`, which owns no file on a normal host.
pub const NOBODY: RunAs = RunAs {
    uid: 65534,
    gid: 65534,
};

/// The flags glibc's `pthread_create` gives `clone`: threads only, no fork
/// and no new namespace.
const THREAD_CLONE_FLAGS: u64 = hull_vmm::seccomp::THREAD_CLONE_FLAGS;

/// What a confined helper may call.
pub(crate) struct Syscalls {
    /// Whatever the arguments.
    pub any: &'static [libc::c_long],
    /// ioctl requests.
    pub ioctls: &'static [u64],
    /// prctl options.
    pub prctls: &'static [u64],
}

/// vhost-device-vsock 0.3, found by tracing it (`strace -f`) while QEMU
/// boots a guest through it and the host and the guest talk over hybrid
/// vsock, plus what std and glibc do on a panic.
pub(crate) const VHOST_VSOCK: Syscalls = Syscalls {
    any: &[
        // The exec and the dynamic loader. `openat` is checked below.
        libc::SYS_execve,
        libc::SYS_access,
        libc::SYS_arch_prctl,
        libc::SYS_set_tid_address,
        // Descriptors.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_lseek,
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_eventfd2,
        // Its Unix sockets: the vhost-user one QEMU connects to, the
        // hybrid vsock one the host connects to, and `<uds>_P`.
        libc::SYS_bind,
        libc::SYS_listen,
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
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        // Memory, guest memory included (a memfd QEMU sends).
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        // Threads.
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_getrandom,
        // Harmless questions libraries ask.
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_uname,
        libc::SYS_readlink,
        libc::SYS_readlinkat,
        libc::SYS_pipe2,
        // Signals, and what a panic or an abort does.
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
        libc::SYS_exit,
        libc::SYS_exit_group,
    ],
    // isatty on stderr (TCGETS), std's set_nonblocking (FIONBIO).
    ioctls: &[libc::TCGETS, libc::FIONBIO],
    // std names its threads.
    prctls: &[libc::PR_SET_NAME as u64],
};

/// The compiled filters: [`clone3_filter`] first, then the allow-list.
pub(crate) struct Sandbox {
    run_as: RunAs,
    clone3: BpfProgram,
    allowed: BpfProgram,
}

fn build_error(helper: &str) -> impl Fn(seccompiler::BackendError) -> VmError + '_ {
    move |err| VmError::Config {
        field: "seccomp filter",
        reason: format!("{helper}: {err}"),
    }
}

fn rule(
    arg: u8,
    len: SeccompCmpArgLen,
    value: u64,
) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompCondition::new(arg, len, SeccompCmpOp::Eq, value)
        .and_then(|condition| SeccompRule::new(vec![condition]))
}

fn one_of(
    arg: u8,
    len: SeccompCmpArgLen,
    values: &[u64],
) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|&value| rule(arg, len.clone(), value))
        .collect()
}

impl Sandbox {
    /// The filters for `helper` (named in errors), allowing `syscalls`.
    pub(crate) fn new(helper: &str, run_as: RunAs, syscalls: &Syscalls) -> Result<Self, VmError> {
        let fail = build_error(helper);
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(&fail)?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            syscalls.any.iter().map(|&nr| (nr, Vec::new())).collect();
        use SeccompCmpArgLen::{Dword, Qword};
        rules.insert(
            libc::SYS_socket,
            one_of(0, Dword, &[libc::AF_UNIX as u64]).map_err(&fail)?,
        );
        rules.insert(
            libc::SYS_socketpair,
            one_of(0, Dword, &[libc::AF_UNIX as u64]).map_err(&fail)?,
        );
        rules.insert(
            libc::SYS_clone,
            one_of(0, Qword, &[THREAD_CLONE_FLAGS]).map_err(&fail)?,
        );
        rules.insert(libc::SYS_clone3, Vec::new());
        rules.insert(
            libc::SYS_ioctl,
            one_of(1, Dword, syscalls.ioctls).map_err(&fail)?,
        );
        rules.insert(
            libc::SYS_prctl,
            one_of(0, Dword, syscalls.prctls).map_err(&fail)?,
        );
        // Reading files (the loader's libraries, /proc/self/maps), never
        // creating or writing one.
        rules.insert(
            libc::SYS_openat,
            one_of(2, Dword, &[(libc::O_RDONLY | libc::O_CLOEXEC) as u64]).map_err(&fail)?,
        );
        // Reading a limit (std's stack guard), never setting one.
        rules.insert(libc::SYS_prlimit64, one_of(2, Qword, &[0]).map_err(&fail)?);
        let allowed = SeccompFilter::new(
            rules,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch,
        )
        .and_then(BpfProgram::try_from)
        .map_err(&fail)?;
        // clone3's flags are in memory, out of seccomp's sight: it fails
        // with ENOSYS, and glibc then falls back to clone, checked above.
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .and_then(BpfProgram::try_from)
        .map_err(&fail)?;
        Ok(Self {
            run_as,
            clone3,
            allowed,
        })
    }

    /// Makes `command`'s child confine itself before its exec.
    pub(crate) fn apply(self, command: &mut Command) {
        // SAFETY: the closure runs in the forked child before exec and only
        // makes system calls on memory built before the fork (no
        // allocation, no lock), which is what pre_exec requires.
        unsafe {
            command.pre_exec(move || self.enter());
        }
    }

    /// In the child, between fork and exec.
    fn enter(&self) -> std::io::Result<()> {
        let flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        check(sys::unshare(flags))?;
        sys::drop_bounding_set()?;
        check(sys::setgroups_none())?;
        check(sys::setresgid(self.run_as.gid))?;
        check(sys::setresuid(self.run_as.uid))?;
        check(sys::no_new_privs())?;
        check(sys::install_filter(&self.clone3))?;
        check(sys::install_filter(&self.allowed))
    }
}

fn check(ret: libc::c_long) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The raw calls, each async-signal-safe.
mod sys {
    use seccompiler::BpfProgram;

    pub(super) fn unshare(flags: libc::c_int) -> libc::c_long {
        // SAFETY: takes plain flags.
        libc::c_long::from(unsafe { libc::unshare(flags) })
    }

    /// Drops every capability from the bounding set, up to the first one
    /// the kernel does not know (EINVAL).
    pub(super) fn drop_bounding_set() -> std::io::Result<()> {
        for cap in 0..64 {
            // SAFETY: PR_CAPBSET_DROP takes plain integers.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                    return Ok(());
                }
                return Err(err);
            }
        }
        Ok(())
    }

    pub(super) fn setgroups_none() -> libc::c_long {
        // SAFETY: an empty list: the pointer is not read. A raw system call,
        // as below.
        unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) }
    }

    pub(super) fn setresgid(gid: u32) -> libc::c_long {
        // SAFETY: takes plain ids. Raw system calls, not glibc's wrappers:
        // the forked child has one thread, and the wrappers' broadcast to
        // every thread is not async-signal-safe.
        unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }
    }

    pub(super) fn setresuid(uid: u32) -> libc::c_long {
        // SAFETY: as `setresgid`.
        unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }
    }

    pub(super) fn no_new_privs() -> libc::c_long {
        // SAFETY: takes plain integers.
        libc::c_long::from(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
    }

    pub(super) fn install_filter(program: &BpfProgram) -> libc::c_long {
        let prog = libc::sock_fprog {
            len: program.len() as libc::c_ushort,
            // The kernel only reads the instructions; seccompiler's
            // instruction type has sock_filter's layout.
            filter: program.as_ptr().cast_mut().cast(),
        };
        // SAFETY: `prog` points at `program`'s instructions, alive for the
        // call, which copies them.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        }
    }
}

#[cfg(test)]
mod tests;
