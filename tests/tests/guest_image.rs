//! The guest image build: a second run on the same machine reuses the cache.

use std::process::Command;

#[test]
fn an_unchanged_rebuild_comes_from_the_cache() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root");
    // The test command built the image just before the suites ran.
    let output = Command::new("bash")
        .arg(repo.join("guest-image/build.sh"))
        .arg(hull_tests::static_agent())
        .output()
        .expect("run guest-image/build.sh");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("kernel: cached"),
        "the kernel was rebuilt:\n{log}"
    );
    assert!(
        log.contains("initramfs: cached"),
        "the initramfs was rebuilt:\n{log}"
    );
    assert!(log.contains("guest image ready in"), "{log}");
    let (kernel, initrd) = hull_tests::vm::guest_image();
    assert!(kernel.exists() && initrd.exists());
}
