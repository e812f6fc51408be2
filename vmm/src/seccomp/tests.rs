//! The filter in a forked child: allowed calls go through, any other kills
//! the child with SIGSYS.

use super::{filters, install};

/// Forks a child that installs the filter and then runs `body`; its exit
/// code is what `body` returns. Returns the child's wait status.
fn in_filtered_child(body: fn() -> libc::c_int) -> libc::c_int {
    // Built before the fork: the child must not allocate (the test harness
    // has other threads, which may hold the allocator's lock).
    let program = filters().expect("filters");
    // SAFETY: the child only calls async-signal-safe functions (prctl,
    // seccomp, the syscalls in `body`, _exit) before it ends.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match install(&program) {
            Ok(()) => body(),
            Err(_) => 100,
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

fn killed_by_sigsys(status: libc::c_int) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

#[test]
fn allowed_calls_go_through_the_filter() {
    let status = in_filtered_child(|| {
        // SAFETY: plain syscalls on fds this child owns.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return 1;
            }
            let event = libc::eventfd(0, libc::EFD_CLOEXEC);
            if event < 0 || libc::write(event, [1u8; 8].as_ptr().cast(), 8) != 8 {
                return 2;
            }
            libc::close(event);
            libc::close(fd);
        }
        0
    });
    assert!(
        libc::WIFEXITED(status),
        "the child died: status {status:#x}"
    );
    assert_eq!(libc::WEXITSTATUS(status), 0);
}

#[test]
fn an_inet_socket_kills_the_process() {
    let status = in_filtered_child(|| {
        // SAFETY: a plain syscall; the filter should end the child here.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn execve_kills_the_process() {
    let status = in_filtered_child(|| {
        let path = c"/bin/true";
        let argv = [path.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: NUL-terminated path and arrays; the filter should end the
        // child before the kernel looks at them.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn opening_a_file_kills_the_process() {
    let status = in_filtered_child(|| {
        // SAFETY: a NUL-terminated path; the filter should end the child here.
        unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn the_reporters_way_to_die_is_outside_the_filter() {
    assert!(!super::ALLOWED.contains(&super::report::DIES_BY));
    assert!(!super::UNIX_ONLY.contains(&super::report::DIES_BY));
}

fn exited_with(status: libc::c_int, code: libc::c_int) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == code
}

#[test]
fn a_clone_into_new_namespaces_kills_the_process() {
    let status = in_filtered_child(|| {
        let flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWPID | libc::SIGCHLD;
        // SAFETY: a fork-like clone (no stack given); the filter should end
        // the child before the kernel makes one.
        unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0, 0, 0, 0) };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn a_fork_kills_the_process() {
    let status = in_filtered_child(|| {
        // SAFETY: clone with only an exit signal is fork; the filter should
        // end the child before the kernel makes one.
        unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn a_thread_clone_with_one_flag_more_kills_the_process() {
    let status = in_filtered_child(|| {
        let flags = super::THREAD_CLONE_FLAGS | libc::CLONE_NEWNS as u64;
        // SAFETY: the kernel would refuse these flags (CLONE_NEWNS with
        // CLONE_FS) with EINVAL; the filter should end the child first.
        unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn clone3_fails_with_enosys_so_glibc_falls_back_to_clone() {
    let status = in_filtered_child(|| {
        // SAFETY: a null `clone_args` would be EFAULT; the filter answers
        // before the kernel reads it.
        let ret = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
        // SAFETY: reads this thread's errno.
        let errno = unsafe { *libc::__errno_location() };
        if ret == -1 && errno == libc::ENOSYS {
            0
        } else {
            1
        }
    });
    assert!(exited_with(status, 0), "status {status:#x}");
}

#[test]
fn the_ioctls_and_prctls_the_vmm_makes_go_through() {
    let status = in_filtered_child(|| {
        // SAFETY: plain syscalls on an fd this child owns and on its own
        // name, from a NUL-terminated buffer.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            let on: libc::c_int = 1;
            if libc::ioctl(fd, libc::FIONBIO, &on) != 0 {
                return 1;
            }
            if libc::prctl(libc::PR_SET_NAME, c"filtered".as_ptr()) != 0 {
                return 2;
            }
            // KVM_RUN on a socket passes the filter and fails in the kernel.
            if libc::ioctl(fd, (0xae << 8) | 0x80, 0) != -1 {
                return 3;
            }
            libc::close(fd);
        }
        0
    });
    assert!(exited_with(status, 0), "status {status:#x}");
}

#[test]
fn any_other_ioctl_kills_the_process() {
    let status = in_filtered_child(|| {
        let mut size = 0 as libc::c_int;
        // SAFETY: FIONREAD on stdin writes one int; the filter should end
        // the child before.
        unsafe { libc::ioctl(0, libc::FIONREAD, &mut size) };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn any_other_prctl_kills_the_process() {
    let status = in_filtered_child(|| {
        // SAFETY: PR_SET_DUMPABLE takes an integer; the filter should end
        // the child before.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}
