//! The quickstart README names, run end to end in a scratch directory: it
//! installs what is missing, builds Hull and the guest image (cached by the
//! test command by then), starts a private containerd with the hull
//! runtime, runs a container in a hull and prints its output and boot
//! timeline; `--stop` leaves nothing behind.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_readme_names_exactly_the_two_set_up_commands() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    assert!(
        readme.contains("sudo bash scripts/quickstart.sh"),
        "quickstart missing"
    );
    assert!(
        readme.contains("sudo bash scripts/test.sh"),
        "test command missing"
    );
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    assert!(ci.contains("scripts/test.sh"), "{ci}");
}

#[test]
fn the_quickstart_runs_a_container_in_a_hull_and_stops_clean() {
    let scratch = tempfile::Builder::new()
        .prefix("hq-")
        .tempdir_in("/tmp")
        .expect("scratch dir");
    let dir = scratch.path().join("qs");
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(repo().join("scripts/quickstart.sh"))
            .args(args)
            .env("HULL_QUICKSTART_DIR", &dir)
            .output()
            .expect("run the quickstart")
    };
    let output = run(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "quickstart failed:\n{stdout}\n{stderr}\ncontainerd log:\n{log}"
    );
    assert!(stdout.contains("Hello from a hull: kernel"), "{stdout}");
    assert!(
        stdout.contains("agent ready"),
        "no boot timeline in:\n{stdout}"
    );
    assert!(
        stdout.contains("verdict"),
        "no hull check verdict in:\n{stdout}"
    );

    let stopped = run(&["--stop"]);
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(!dir.exists(), "{} is left", dir.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&*dir.to_string_lossy()),
        "mounts under {} are left",
        dir.display()
    );
}
