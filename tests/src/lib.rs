//! Shared harness for Hull's suites: busybox root filesystems, OCI specs, and
//! a real `hull-agent` started on the host and reached over a Unix socket;
//! locally built OCI images, a private containerd and a CRI client.

pub mod agent;
pub mod confinement;
pub mod containerd;
pub mod cri;
pub mod driver;
pub mod faults;
pub mod hull_runtime;
pub mod image;
pub mod kvm_host;
pub mod leaks;
pub mod peer;
pub mod pod_cgroup;
pub mod probe;
pub mod rootfs;
pub mod soak;
pub mod spec;
pub mod streaming;
pub mod vm;

use std::path::PathBuf;

/// A binary of this workspace, built next to the test executable.
///
/// The test command builds every binary before it runs the suites; a missing
/// one is reported with the command that builds it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    // A test runs from target/<profile>/deps, a binary from target/<profile>.
    let exe_dir = exe.parent().expect("executable directory");
    let profile_dir = if exe_dir.ends_with("deps") {
        exe_dir.parent().expect("target/<profile>")
    } else {
        exe_dir
    };
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        binary.display()
    );
    binary
}

/// Where the set-up caches builds: `$HULL_CACHE`, by default
/// /var/cache/hull, as in the scripts.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HULL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hull"))
}

/// A kernel and initramfs that `script` builds into `dir`; a missing one
/// fails the test naming the script to run.
pub fn kernel_and_initrd(dir: &std::path::Path, kernel: &str, script: &str) -> (PathBuf, PathBuf) {
    let kernel = dir.join(kernel);
    let initrd = dir.join("initramfs.cpio.gz");
    for artifact in [&kernel, &initrd] {
        assert!(
            artifact.exists(),
            "{} is missing: run {script}",
            artifact.display()
        );
    }
    (kernel, initrd)
}

/// The statically linked agent that goes into the guest initramfs, as
/// `scripts/build-agent-static.sh` builds it.
pub fn static_agent() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let target_dir = exe
        .ancestors()
        .nth(3)
        .expect("test executable lives in <target>/<profile>/deps");
    let binary = target_dir.join("x86_64-unknown-linux-gnu/release/hull-agent");
    assert!(
        binary.exists(),
        "{} is missing: run scripts/build-agent-static.sh first",
        binary.display()
    );
    binary
}

/// A process-wide unique, id-safe name, so parallel tests never share a
/// container id or cgroup.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A command's output as text, for checks and failure messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One pod VM at a time within a test binary: they are emulated, and two
/// cores are few. Each test binary links its own copy of this lock.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
