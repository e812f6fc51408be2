//! tests/escape-probe/probe.rs, built for test containers: what busybox has
//! no applet for (sockets, SysV shared memory); see its documentation.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the probe, statically linked so that it runs on the busybox
/// rootfs, into `dir`; returns its path there.
pub fn build(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("escape-probe/probe.rs");
    let binary = dir.join("probe");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--edition", "2024", "-O", "-C", "strip=symbols"])
        .args(["-C", "target-feature=+crt-static"])
        .args(["--target", "x86_64-unknown-linux-gnu", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("run rustc");
    assert!(
        output.status.success(),
        "building {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}
