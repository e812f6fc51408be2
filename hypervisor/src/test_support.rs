//! For tests of this crate and of the crates above it (the `test-support`
//! feature): helpers that race the kernel, written once.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

/// Waits up to 5 s until `/proc/<pid>/cmdline` contains `arg`. A spawn
/// returns once the child's exec began: the parent of a vfork-exec resumes
/// before the kernel has set up the new arguments, and until then `/proc`
/// shows none, so a scan of `/proc` by arguments (as the cleanup of what a
/// VM left behind does) would miss the child.
pub fn wait_until_listed_with(pid: u32, arg: &OsStr) {
    let cmdline = format!("/proc/{pid}/cmdline");
    let arg = arg.as_encoded_bytes();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read(&cmdline).is_ok_and(|args| args.windows(arg.len()).any(|part| part == arg))
    {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never showed {arg:?} in its arguments"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
