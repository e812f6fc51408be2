//! The filter in a forked child: allowed calls go through, any other kills
//! the child with SIGSYS.

use super::{filter, install};

/// Forks a child that installs the filter and then runs `body`; its exit
/// code is what `body` returns. Returns the child's wait status.
fn in_filtered_child(body: fn() -> libc::c_int) -> libc::c_int {
    // Built before the fork: the child must not allocate (the test harness
    // has other threads, which may hold the allocator's lock).
    let program = filter().expect("filter");
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
