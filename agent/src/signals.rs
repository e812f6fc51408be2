//! Signal dispositions that must not leak into containers.

use nix::sys::signal::{SigHandler, Signal, signal};

/// Rust programs start with SIGPIPE ignored, and an ignored signal stays
/// ignored across `exec`. The runtime helper calls this before it starts a
/// container, so `yes | head` inside behaves as it does anywhere else.
pub fn restore_default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler code, so none of signal(2)'s
    // async-signal-safety concerns apply; the helper is single-threaded here.
    if let Err(err) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        tracing::warn!(%err, "cannot restore SIGPIPE");
    }
}
