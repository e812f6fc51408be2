//! `hull check`: what this host offers Hull, and whether Hull can run here.
//! The crate documentation gives the JSON schema of [`Report`].

mod probe;
mod render;

pub use probe::{Artifact, DevKvm, Program, kernel_release};
pub use render::render;

use std::path::{Path, PathBuf};

use hull_config::Config;
use hull_hypervisor::host::KvmFacts;
use hull_hypervisor::{Backend, BackendKind};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: String,
    pub config: ConfigState,
    pub cpu_flag: Option<&'static str>,
    pub dev_kvm: DevKvm,
    pub kvm_modules: Vec<String>,
    pub hardware_kvm: bool,
    pub programs: Programs,
    pub kernel: Artifact,
    pub initrd: Artifact,
    pub checks: Vec<Check>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigState {
    pub path: PathBuf,
    /// A missing default file means the defaults, and is no error.
    pub exists: bool,
    pub loaded: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Programs {
    pub qemu: Program,
    pub virtiofsd: Program,
    pub vhost_device_vsock: Program,
    pub hull_vmm: Program,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub can_run: bool,
    pub requested: &'static str,
    pub backend: Option<&'static str>,
    pub accel: Option<&'static str>,
    pub reason: String,
    pub problems: Vec<String>,
}

/// The QEMU backend's own programs; hull-vmm's comes from the config.
const QEMU: &str = "qemu-system-x86_64";
const VIRTIOFSD: &str = "virtiofsd";
const VHOST_DEVICE_VSOCK: &str = "vhost-device-vsock";

/// Probes this host with the configuration at `config_path`.
pub fn run(config_path: &Path) -> Report {
    let exists = config_path.is_file();
    let (config, config_state) = match Config::load(config_path) {
        Ok(config) => (
            config,
            ConfigState {
                path: config_path.to_owned(),
                exists,
                loaded: true,
                error: None,
            },
        ),
        // The rest of the report is still worth having, so the defaults
        // stand in; the verdict names the bad file.
        Err(err) => (
            Config::default(),
            ConfigState {
                path: config_path.to_owned(),
                exists,
                loaded: false,
                error: Some(err.to_string()),
            },
        ),
    };
    let facts = KvmFacts::probe();
    let dev_kvm = DevKvm::probe_at(Path::new("/dev/kvm"));
    let programs = Programs {
        qemu: Program::probe(QEMU),
        virtiofsd: Program::probe(VIRTIOFSD),
        vhost_device_vsock: Program::probe(VHOST_DEVICE_VSOCK),
        hull_vmm: Program::probe(&config.hull_vmm),
    };
    let kernel = Artifact::probe(&config.kernel, true);
    let initrd = Artifact::probe(&config.initrd, false);
    assemble(
        config.backend,
        config_state,
        &facts,
        dev_kvm,
        programs,
        kernel,
        initrd,
    )
}

/// Turns the probed facts into checks and a verdict; separate from probing
/// so that every host's verdict can be tested here.
fn assemble(
    requested: BackendKind,
    config: ConfigState,
    facts: &KvmFacts,
    dev_kvm: DevKvm,
    programs: Programs,
    kernel: Artifact,
    initrd: Artifact,
) -> Report {
    let (accel, why) = facts.choose();
    let hardware_kvm = accel == hull_hypervisor::host::Accel::Kvm;
    let verdict = verdict(
        requested, &config, facts, &dev_kvm, &programs, &kernel, &initrd,
    );
    let mut report = Report {
        version: crate::version().to_owned(),
        config,
        cpu_flag: facts.cpu_flag,
        dev_kvm,
        kvm_modules: facts.modules.clone(),
        hardware_kvm,
        programs,
        kernel,
        initrd,
        checks: Vec::new(),
        verdict,
    };
    report.checks = checks(&report, &why);
    report
}

fn verdict(
    requested: BackendKind,
    config: &ConfigState,
    facts: &KvmFacts,
    dev_kvm: &DevKvm,
    programs: &Programs,
    kernel: &Artifact,
    initrd: &Artifact,
) -> Verdict {
    let mut problems = Vec::new();
    if let Some(error) = &config.error {
        problems.push(format!("config {}: {error}", config.path.display()));
    }
    let requested_name = match requested {
        BackendKind::Auto => "auto",
        BackendKind::Hull => "hull",
        BackendKind::Qemu => "qemu",
    };
    let (backend, accel, reason) = match Backend::select(requested, facts) {
        Ok((backend, reason)) => {
            let (accel, needed) = match &backend {
                Backend::Hull(_) => ("kvm", vec![&programs.hull_vmm, &programs.virtiofsd]),
                Backend::Qemu(qemu) => (
                    qemu.accel.as_str(),
                    vec![
                        &programs.qemu,
                        &programs.virtiofsd,
                        &programs.vhost_device_vsock,
                    ],
                ),
            };
            for program in needed.into_iter().filter(|p| !p.found()) {
                problems.push(format!(
                    "{} is missing: {}",
                    program.program,
                    program.error.as_deref().unwrap_or("not found")
                ));
            }
            if accel == "kvm" && !dev_kvm.accessible {
                problems.push(format!(
                    "/dev/kvm cannot be opened read-write: {}",
                    dev_kvm.error.as_deref().unwrap_or("it does not exist")
                ));
            }
            (Some(backend.name()), Some(accel), reason)
        }
        Err(err) => {
            problems.push(err.to_string());
            (None, None, err.to_string())
        }
    };
    for (what, artifact) in [("kernel", kernel), ("initrd", initrd)] {
        if !artifact.present {
            problems.push(format!(
                "the guest {what} {} is missing (`hull image build` builds the default one)",
                artifact.path.display()
            ));
        }
    }
    Verdict {
        can_run: problems.is_empty(),
        requested: requested_name,
        backend,
        accel,
        reason,
        problems,
    }
}

fn checks(report: &Report, why: &str) -> Vec<Check> {
    let check = |name, status, detail: String| Check {
        name,
        status,
        detail,
    };
    let mut checks = vec![match &report.config.error {
        None if report.config.exists => check(
            "config",
            Status::Ok,
            report.config.path.display().to_string(),
        ),
        None => check(
            "config",
            Status::Ok,
            format!(
                "{} does not exist: the defaults",
                report.config.path.display()
            ),
        ),
        Some(error) => check("config", Status::Fail, error.clone()),
    }];
    checks.push(match report.cpu_flag {
        Some(flag) => check("cpu virtualization", Status::Ok, flag.to_owned()),
        None => check(
            "cpu virtualization",
            Status::Warn,
            "no vmx or svm flag in /proc/cpuinfo".to_owned(),
        ),
    });
    let kvm = &report.dev_kvm;
    checks.push(match (kvm.exists, kvm.accessible) {
        (true, true) => check("/dev/kvm", Status::Ok, "exists, read-write".to_owned()),
        (true, false) => check(
            "/dev/kvm",
            Status::Warn,
            format!(
                "exists but cannot be opened read-write: {}",
                kvm.error.as_deref().unwrap_or("?")
            ),
        ),
        (false, _) => check("/dev/kvm", Status::Warn, "does not exist".to_owned()),
    });
    let modules = if report.kvm_modules.is_empty() {
        "none loaded".to_owned()
    } else {
        report.kvm_modules.join(", ")
    };
    checks.push(if report.hardware_kvm {
        check(
            "kvm",
            Status::Ok,
            format!("hardware-backed; modules: {modules}"),
        )
    } else {
        check(
            "kvm",
            Status::Warn,
            format!("not usable for a normal guest ({why}); modules: {modules}"),
        )
    });
    let needed: &[&str] = match report.verdict.backend {
        Some("hull") => &["hull-vmm", VIRTIOFSD],
        Some(_) => &["qemu", VIRTIOFSD, VHOST_DEVICE_VSOCK],
        None => &[],
    };
    let programs = &report.programs;
    for (name, program) in [
        ("qemu", &programs.qemu),
        (VIRTIOFSD, &programs.virtiofsd),
        (VHOST_DEVICE_VSOCK, &programs.vhost_device_vsock),
        ("hull-vmm", &programs.hull_vmm),
    ] {
        checks.push(match (&program.path, &program.version) {
            (Some(path), Some(version)) => {
                check(name, Status::Ok, format!("{} ({version})", path.display()))
            }
            (Some(path), None) => check(
                name,
                Status::Warn,
                format!(
                    "{}: {}",
                    path.display(),
                    program.error.as_deref().unwrap_or("no version")
                ),
            ),
            (None, _) => check(
                name,
                if needed.contains(&name) {
                    Status::Fail
                } else {
                    Status::Warn
                },
                program.error.clone().unwrap_or_default(),
            ),
        });
    }
    for (name, artifact) in [("kernel", &report.kernel), ("initrd", &report.initrd)] {
        checks.push(if artifact.present {
            let mut detail = artifact.path.display().to_string();
            if let Some(resolved) = artifact.resolved.as_ref().filter(|r| **r != artifact.path) {
                detail += &format!(" -> {}", resolved.display());
            }
            if let Some(release) = &artifact.release {
                detail += &format!(", Linux {release}");
            }
            if let Some(size) = artifact.size {
                detail += &format!(", {}", human_size(size));
            }
            check(name, Status::Ok, detail)
        } else {
            check(
                name,
                Status::Fail,
                format!("{} is missing", artifact.path.display()),
            )
        });
    }
    checks
}

fn human_size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests;
