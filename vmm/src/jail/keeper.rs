//! The keeper: the process that was started, outside the jail. It waits
//! for the jailed VMM and ends the same way.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// The jailed VMM, for the signal handler.
static VMM: AtomicI32 = AtomicI32::new(0);
/// The terminating signal the keeper got, to end by it too.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The signals that would end the keeper: they end the VMM instead.
const ENDING: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

extern "C" fn end_vmm(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
    let vmm = VMM.load(Ordering::SeqCst);
    if vmm > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes plain integers.
        unsafe { libc::kill(vmm, libc::SIGKILL) };
    }
}

/// Waits for `vmm`, then exits with its exit code or dies by its signal.
/// `_alive` is held open until then (see `die_with_keeper`).
pub(super) fn keep(vmm: Pid, _alive: OwnedFd) -> ! {
    VMM.store(vmm.as_raw(), Ordering::SeqCst);
    let handler = SigAction::new(
        SigHandler::Handler(end_vmm),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in ENDING {
        // SAFETY: the handler only stores to atomics and calls kill(2).
        if let Err(err) = unsafe { sigaction(signal, &handler) } {
            tracing::error!(%err, ?signal, "the jail's keeper cannot forward this signal");
        }
    }
    loop {
        match waitpid(vmm, None) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                let received = RECEIVED.load(Ordering::SeqCst);
                let by = Signal::try_from(received).unwrap_or(signal);
                die_by(by)
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => {
                tracing::error!(%err, "waiting for the jailed VMM");
                let _ = kill(vmm, Signal::SIGKILL);
                std::process::exit(1);
            }
        }
    }
}

/// Ends this process by `signal`, as the VMM ended, so whoever waits for
/// the keeper sees the VMM's own end (e.g. SIGSYS from its seccomp filter).
fn die_by(signal: Signal) -> ! {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: restoring the default action installs no handler.
    let _ = unsafe { sigaction(signal, &default) };
    let mut unblock = SigSet::empty();
    unblock.add(signal);
    let _ = unblock.thread_unblock();
    // No core dump from the keeper: its memory holds nothing of interest.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    let _ = nix::sys::signal::raise(signal);
    // Only signals that do not end a process get here.
    std::process::exit(128 + signal as i32)
}
