use super::*;

fn facts(cpu_flag: Option<&'static str>, modules: &[&str]) -> KvmFacts {
    KvmFacts {
        cpu_flag,
        dev_kvm: true,
        modules: modules.iter().map(|m| (*m).to_owned()).collect(),
    }
}

fn found(name: &str) -> Program {
    Program {
        program: name.to_owned(),
        path: Some(PathBuf::from(format!("/usr/bin/{name}"))),
        version: Some(format!("{name} 1.0")),
        error: None,
    }
}

fn missing(name: &str) -> Program {
    Program {
        program: name.to_owned(),
        path: None,
        version: None,
        error: Some(format!("{name} not found: it is not in PATH")),
    }
}

fn artifact(path: &str, present: bool) -> Artifact {
    Artifact {
        path: PathBuf::from(path),
        present,
        resolved: present.then(|| PathBuf::from(path)),
        size: present.then_some(1 << 20),
        release: None,
    }
}

fn config() -> ConfigState {
    ConfigState {
        path: PathBuf::from("/etc/hull/config.toml"),
        exists: true,
        loaded: true,
        error: None,
    }
}

fn kvm() -> DevKvm {
    DevKvm {
        exists: true,
        accessible: true,
        error: None,
    }
}

fn all_programs() -> Programs {
    Programs {
        qemu: found("qemu-system-x86_64"),
        virtiofsd: found("virtiofsd"),
        vhost_device_vsock: found("vhost-device-vsock"),
        hull_vmm: found("hull-vmm"),
    }
}

fn report(requested: BackendKind, facts: &KvmFacts, programs: Programs) -> Report {
    assemble(
        requested,
        config(),
        facts,
        kvm(),
        programs,
        artifact("/k/vmlinux", true),
        artifact("/k/initramfs.cpio.gz", true),
    )
}

#[test]
fn pvm_means_qemu_tcg_and_hull_vmm_is_not_needed() {
    let programs = Programs {
        hull_vmm: missing("hull-vmm"),
        ..all_programs()
    };
    let report = report(
        BackendKind::Auto,
        &facts(None, &["kvm", "kvm_pvm"]),
        programs,
    );
    let verdict = &report.verdict;
    assert!(verdict.can_run, "{verdict:?}");
    assert_eq!(
        (verdict.backend, verdict.accel),
        (Some("qemu"), Some("tcg"))
    );
    assert!(verdict.reason.contains("PVM"), "{}", verdict.reason);
    assert!(!report.hardware_kvm);
    let hull_vmm = report
        .checks
        .iter()
        .find(|c| c.name == "hull-vmm")
        .expect("check");
    assert_eq!(hull_vmm.status, Status::Warn);
    assert!(render(&report).contains("verdict: Hull can run here with backend qemu (accel tcg)"));
}

#[test]
fn hardware_kvm_needs_hull_vmm_and_an_open_dev_kvm() {
    let hardware = facts(Some("svm"), &["kvm", "kvm_amd"]);
    let ok = report(BackendKind::Auto, &hardware, all_programs());
    assert!(ok.hardware_kvm);
    assert_eq!(
        (ok.verdict.backend, ok.verdict.accel, ok.verdict.can_run),
        (Some("hull"), Some("kvm"), true)
    );

    let programs = Programs {
        hull_vmm: missing("hull-vmm"),
        ..all_programs()
    };
    let mut locked = assemble(
        BackendKind::Auto,
        config(),
        &hardware,
        DevKvm {
            exists: true,
            accessible: false,
            error: Some("Permission denied (os error 13)".into()),
        },
        programs,
        artifact("/k/vmlinux", true),
        artifact("/k/initramfs.cpio.gz", true),
    );
    assert!(!locked.verdict.can_run);
    let problems = locked.verdict.problems.join("\n");
    assert!(problems.contains("hull-vmm is missing"), "{problems}");
    assert!(problems.contains("Permission denied"), "{problems}");
    locked.checks.retain(|c| c.name == "hull-vmm");
    assert_eq!(locked.checks[0].status, Status::Fail);
}

#[test]
fn a_missing_kernel_or_bad_config_stops_hull_and_is_named() {
    let report = assemble(
        BackendKind::Auto,
        ConfigState {
            path: PathBuf::from("/tmp/hull.toml"),
            exists: true,
            loaded: false,
            error: Some("backend: \"xen\" is not one of …".into()),
        },
        &facts(None, &["kvm", "kvm_pvm"]),
        kvm(),
        all_programs(),
        artifact("/nowhere/vmlinux", false),
        artifact("/k/initramfs.cpio.gz", true),
    );
    assert!(!report.verdict.can_run);
    let problems = report.verdict.problems.join("\n");
    assert!(problems.contains("/nowhere/vmlinux"), "{problems}");
    assert!(problems.contains("/tmp/hull.toml"), "{problems}");
    let text = render(&report);
    assert!(text.contains("verdict: Hull cannot run here"), "{text}");
    assert!(text.contains("/nowhere/vmlinux is missing"), "{text}");
}

#[test]
fn hull_requested_without_hardware_kvm_is_refused_with_the_reason() {
    let report = report(
        BackendKind::Hull,
        &facts(None, &["kvm", "kvm_pvm"]),
        all_programs(),
    );
    let verdict = &report.verdict;
    assert!(!verdict.can_run);
    assert_eq!((verdict.requested, verdict.backend), ("hull", None));
    assert!(verdict.reason.contains("PVM"), "{}", verdict.reason);
}

#[test]
fn the_json_has_the_documented_fields() {
    let report = report(
        BackendKind::Auto,
        &facts(None, &["kvm", "kvm_pvm"]),
        all_programs(),
    );
    let json = serde_json::to_value(&report).expect("json");
    for field in [
        "version",
        "config",
        "cpu_flag",
        "dev_kvm",
        "kvm_modules",
        "hardware_kvm",
        "programs",
        "kernel",
        "initrd",
        "checks",
        "verdict",
    ] {
        assert!(json.get(field).is_some(), "{field} missing: {json}");
    }
    assert_eq!(json["cpu_flag"], serde_json::Value::Null);
    assert_eq!(
        json["programs"]["vhost_device_vsock"]["version"],
        "vhost-device-vsock 1.0"
    );
    assert_eq!(json["checks"][0]["status"], "ok");
    assert_eq!(json["verdict"]["requested"], "auto");
}
