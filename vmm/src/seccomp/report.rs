//! What a call outside the filter looks like: the kernel traps it
//! (`SECCOMP_RET_TRAP`), this handler writes the call's number to stderr
//! (the VMM's log, which the shim keeps) and the process then dies by SIGSYS
//! all the same (through a second trapped call, see [`DIES_BY`]). Without it a `SECCOMP_RET_KILL_PROCESS` death names no
//! call, and finding a call the filter lacks takes a strace run.

use std::io::Write;

/// Where the kernel's `siginfo_t` for a seccomp SIGSYS keeps the call's
/// number (`_sigsys._syscall`): after si_signo, si_errno, si_code, padding
/// and the 8-byte `_call_addr`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn report_and_die(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: an SA_SIGINFO handler gets a valid siginfo_t from the
    // kernel, and a seccomp SIGSYS fills `_sigsys`, whose `_syscall` is an
    // aligned i32 at this offset on x86_64.
    let number = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read()
    };
    // No allocation in a signal handler: the message goes through a stack
    // buffer, and write(2) is allowed by the filter.
    let mut message = [0u8; 96];
    let mut cursor = std::io::Cursor::new(&mut message[..]);
    let _ = writeln!(
        cursor,
        "hull-vmm: system call {number} is not allowed by its seccomp filter"
    );
    let len = cursor.position() as usize;
    // SAFETY: writes `len` initialised bytes of `message` to stderr, then
    // only async-signal-safe calls with plain arguments.
    unsafe {
        libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), len);
        libc::signal(signal, libc::SIG_DFL);
        // A signal the process sends itself would not end it when it is
        // PID 1 of its namespace (jailed): the kernel drops it. A second
        // trapped call makes the kernel force SIGSYS, now at its default
        // action, and that ends even a namespace's init. `DIES_BY` would be
        // harmless if it ever got through.
        libc::syscall(DIES_BY);
        libc::_exit(128 + signal);
    }
}

/// A call the filter does not allow (checked by a unit test) and that
/// changes nothing if it ran: the handler's way to die.
pub(super) const DIES_BY: libc::c_long = libc::SYS_getppid;

/// Installs the handler for SIGSYS, process-wide.
pub(super) fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO
    // signature and only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            report_and_die;
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
