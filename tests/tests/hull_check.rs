//! The `hull` command: `hull check` on this host (PVM /dev/kvm, so QEMU
//! with TCG) and inside the KVM test host (hardware KVM, so hull-vmm), a
//! guest image that is missing, a bad config; `hull image build` and
//! `hull version`.
//!
//! The KVM-test-host case boots the test host and runs this same test
//! binary in it, filtered to the inner test, which is ignored everywhere
//! else (as in vm_hull.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use hull_tests::{kvm_host, workspace_binary};
use serde_json::Value;

/// Set in the test host, so the inner test knows where it runs.
const INSIDE: &str = "HULL_INSIDE_KVM_TEST_HOST";

fn hull(args: &[&str]) -> Output {
    Command::new(workspace_binary("hull"))
        .args(args)
        // Only --config may choose the file, whatever the caller's env says.
        .env_remove("HULL_CONFIG")
        .output()
        .expect("run hull")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config file naming `kernel`, `initrd` and, if given, `hull_vmm`.
fn config(dir: &Path, kernel: &Path, initrd: &Path, hull_vmm: Option<&Path>) -> PathBuf {
    let mut toml = format!(
        "kernel = {:?}\ninitrd = {:?}\n",
        kernel.display().to_string(),
        initrd.display().to_string()
    );
    if let Some(vmm) = hull_vmm {
        toml += &format!("hull_vmm = {:?}\n", vmm.display().to_string());
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).expect("write the config");
    path
}

/// `hull check --json --config <config>`: the report and the exit code.
fn check_json(config: &Path) -> (Value, i32) {
    let output = hull(&[
        "check",
        "--json",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "not JSON ({err}):\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        )
    });
    (report, output.status.code().expect("exit code"))
}

fn modules(report: &Value) -> Vec<&str> {
    report["kvm_modules"]
        .as_array()
        .expect("kvm_modules")
        .iter()
        .map(|m| m.as_str().expect("module name"))
        .collect()
}

/// Every program the backend needs was found, with a version.
fn assert_found(report: &Value, programs: &[&str]) {
    for program in programs {
        let probed = &report["programs"][program];
        assert!(probed["path"].is_string(), "{program}: {probed}");
        assert!(
            probed["version"].as_str().is_some_and(|v| !v.is_empty()),
            "{program}: {probed}"
        );
    }
}

fn assert_guest_image(report: &Value, kernel: &Path, initrd: &Path) {
    assert_eq!(report["kernel"]["path"], kernel.display().to_string());
    assert_eq!(report["kernel"]["present"], true);
    assert!(report["kernel"]["size"].as_u64().is_some_and(|s| s > 0));
    // guest-image/build.sh builds 6.1 from linux-source-6.1.
    let release = report["kernel"]["release"].as_str().expect("release");
    assert!(release.starts_with("6.1"), "{release}");
    assert_eq!(report["initrd"]["path"], initrd.display().to_string());
    assert_eq!(report["initrd"]["present"], true);
    assert!(report["initrd"]["size"].as_u64().is_some_and(|s| s > 0));
}

#[test]
fn check_on_this_host_picks_qemu_with_tcg_because_kvm_is_pvm() {
    let (kernel, initrd) = hull_tests::vm::guest_image();
    let dir = tempfile::tempdir().expect("dir");
    let config = config(dir.path(), &kernel, &initrd, None);
    let (report, code) = check_json(&config);

    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["config"]["path"], config.display().to_string());
    assert_eq!(report["config"]["loaded"], true);
    assert_eq!(report["cpu_flag"], Value::Null, "{report:#}");
    assert_eq!(report["dev_kvm"]["exists"], true, "{report:#}");
    assert!(modules(&report).contains(&"kvm_pvm"), "{report:#}");
    assert_eq!(report["hardware_kvm"], false);
    assert_found(&report, &["qemu", "virtiofsd", "vhost_device_vsock"]);
    assert!(
        report["programs"]["qemu"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("QEMU emulator version")),
        "{report:#}"
    );
    assert_guest_image(&report, &kernel, &initrd);

    let verdict = &report["verdict"];
    assert_eq!(verdict["requested"], "auto");
    assert_eq!(verdict["backend"], "qemu", "{verdict}");
    assert_eq!(verdict["accel"], "tcg", "{verdict}");
    assert!(
        verdict["reason"]
            .as_str()
            .is_some_and(|r| r.contains("PVM")),
        "{verdict}"
    );
    assert_eq!(verdict["can_run"], true, "{report:#}");
    assert_eq!(verdict["problems"], Value::Array(Vec::new()));
    assert_eq!(code, 0);
    for check in report["checks"].as_array().expect("checks") {
        assert_ne!(check["status"], "fail", "{check}");
    }

    let human = hull(&["check", "--config", config.to_str().expect("utf-8")]);
    let table = text(&human.stdout);
    assert!(human.status.success(), "{table}");
    assert!(
        table.contains("verdict: Hull can run here with backend qemu (accel tcg)"),
        "{table}"
    );
    assert!(table.contains("PVM"), "{table}");
    assert!(table.contains("Linux 6.1"), "{table}");
}

#[test]
fn check_fails_naming_a_missing_kernel() {
    let (_, initrd) = hull_tests::vm::guest_image();
    let dir = tempfile::tempdir().expect("dir");
    let kernel = dir.path().join("no-such-vmlinux");
    let config = config(dir.path(), &kernel, &initrd, None);
    let (report, code) = check_json(&config);
    assert_ne!(code, 0);
    assert_eq!(report["kernel"]["present"], false);
    assert_eq!(report["kernel"]["release"], Value::Null);
    let verdict = &report["verdict"];
    assert_eq!(verdict["can_run"], false);
    let kernel = kernel.display().to_string();
    assert!(
        verdict["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains(&kernel))),
        "{verdict}"
    );

    let human = hull(&["check", "--config", config.to_str().expect("utf-8")]);
    let table = text(&human.stdout);
    assert!(!human.status.success());
    assert!(table.contains("verdict: Hull cannot run here"), "{table}");
    assert!(table.contains(&kernel), "{table}");
}

#[test]
fn check_fails_naming_a_bad_config() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "backend = \"xen\"\n").expect("config");
    let (report, code) = check_json(&config);
    assert_ne!(code, 0);
    assert_eq!(report["config"]["loaded"], false);
    assert!(
        report["config"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("backend")),
        "{report:#}"
    );
    assert_eq!(report["verdict"]["can_run"], false);

    // A file named explicitly must exist; only the default may be absent.
    let (report, code) = check_json(&dir.path().join("absent.toml"));
    assert_ne!(code, 0);
    assert_eq!(report["config"]["exists"], false);
    assert_eq!(report["config"]["loaded"], false);
}

#[test]
fn version_prints_the_crate_version() {
    for args in [&["version"][..], &["--version"][..]] {
        let output = hull(args);
        assert!(output.status.success());
        let printed = text(&output.stdout);
        assert!(
            printed.starts_with(&format!("hull {}", env!("CARGO_PKG_VERSION"))),
            "{args:?}: {printed}"
        );
    }
}

#[test]
fn image_build_runs_the_source_trees_script_and_reports_failure() {
    let source = tempfile::tempdir().expect("dir");
    let run = |source: &Path, args: &[&str]| {
        Command::new(workspace_binary("hull"))
            .args(["image", "build"])
            .args(args)
            .env("HULL_SOURCE", source)
            .output()
            .expect("run hull")
    };

    let missing = run(source.path(), &[]);
    assert!(!missing.status.success());
    let error = text(&missing.stderr);
    assert!(error.contains("guest-image/build.sh is missing"), "{error}");
    assert!(error.contains("HULL_SOURCE"), "{error}");
    assert!(!error.contains("backtrace"), "{error}");

    let script = source.path().join("guest-image/build.sh");
    std::fs::create_dir_all(script.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &script,
        "echo \"==> building with $*\" >&2\necho /cache/guest\nexit ${FAIL:-0}\n",
    )
    .expect("script");
    let built = run(source.path(), &["/my/agent"]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    assert_eq!(text(&built.stdout), "/cache/guest\n");
    assert!(text(&built.stderr).contains("==> building with /my/agent"));

    let failed = Command::new(workspace_binary("hull"))
        .args(["image", "build"])
        .env("HULL_SOURCE", source.path())
        .env("FAIL", "3")
        .output()
        .expect("run hull");
    assert!(!failed.status.success());
    let error = text(&failed.stderr);
    assert!(
        error.contains("build.sh failed (exit status: 3)"),
        "{error}"
    );
}

#[test]
fn check_in_the_kvm_test_host_picks_hull_vmm_with_hardware_kvm() {
    let output = kvm_host::rerun_tests(kvm_host::Rerun {
        tests: &["inside_the_kvm_test_host"],
        env: &format!("{INSIDE}=1"),
        include_ignored: true,
        tmpfs_tmp: false,
        memory_mib: 2048,
        vcpus: 1,
        timeout: Duration::from_secs(400),
    });
    assert!(
        output.contains("verdict: Hull can run here with backend hull (accel kvm)"),
        "{output}"
    );
}

#[test]
#[ignore = "runs inside the KVM test host, started by check_in_the_kvm_test_host_picks_hull_vmm_with_hardware_kvm"]
fn inside_the_kvm_test_host() {
    assert!(
        std::env::var_os(INSIDE).is_some(),
        "this test needs hardware KVM: it runs inside the KVM test host"
    );
    let (kernel, initrd) = hull_tests::vm::guest_image();
    let vmm = workspace_binary("hull-vmm");
    let dir = tempfile::tempdir().expect("dir");
    let config = config(dir.path(), &kernel, &initrd, Some(&vmm));
    let (report, code) = check_json(&config);

    assert_eq!(report["cpu_flag"], "svm", "{report:#}");
    assert_eq!(report["dev_kvm"]["exists"], true);
    assert_eq!(report["dev_kvm"]["accessible"], true, "{report:#}");
    assert!(modules(&report).contains(&"kvm_amd"), "{report:#}");
    assert_eq!(report["hardware_kvm"], true, "{report:#}");
    assert_found(&report, &["hull_vmm", "virtiofsd"]);
    assert_eq!(
        report["programs"]["hull_vmm"]["path"],
        vmm.display().to_string()
    );
    assert!(
        report["programs"]["hull_vmm"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("hull-vmm ")),
        "{report:#}"
    );
    assert_guest_image(&report, &kernel, &initrd);
    let verdict = &report["verdict"];
    assert_eq!(verdict["backend"], "hull", "{verdict}");
    assert_eq!(verdict["accel"], "kvm", "{verdict}");
    assert_eq!(verdict["can_run"], true, "{report:#}");
    assert_eq!(code, 0);

    let human = hull(&["check", "--config", config.to_str().expect("utf-8")]);
    let table = text(&human.stdout);
    print!("{table}");
    assert!(human.status.success(), "{table}");
}
