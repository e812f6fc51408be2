//! Which backend runs a pod's VM: `hull` (hull-vmm) wherever KVM has
//! hardware virtualization, QEMU otherwise (with TCG where KVM cannot run a
//! normal guest).

use std::str::FromStr;

use crate::host::{Accel, KvmFacts};
use crate::hull::HullVmm;
use crate::qemu::Qemu;
use crate::vm::Vm;
use crate::{VmConfig, VmError};

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    Hull,
    Qemu,
    #[default]
    Auto,
}

impl FromStr for BackendKind {
    type Err = VmError;

    fn from_str(value: &str) -> Result<Self, VmError> {
        match value {
            "hull" => Ok(Self::Hull),
            "qemu" => Ok(Self::Qemu),
            "auto" => Ok(Self::Auto),
            other => Err(VmError::Config {
                field: "backend",
                reason: format!("{other:?} is not one of \"hull\", \"qemu\", \"auto\""),
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Backend {
    Hull(HullVmm),
    Qemu(Qemu),
}

impl Backend {
    /// Picks the backend for this host; the reason says why.
    pub fn select(kind: BackendKind, facts: &KvmFacts) -> Result<(Self, String), VmError> {
        let (accel, why) = facts.choose();
        match (kind, accel) {
            (BackendKind::Hull | BackendKind::Auto, Accel::Kvm) => {
                Ok((Self::Hull(HullVmm::default()), format!("hull-vmm: {why}")))
            }
            (BackendKind::Hull, Accel::Tcg) => Err(VmError::Config {
                field: "backend",
                reason: format!("\"hull\" needs KVM with hardware virtualization, and here {why}"),
            }),
            (BackendKind::Qemu | BackendKind::Auto, accel) => {
                let mut qemu = Qemu::detect();
                qemu.accel = accel;
                Ok((
                    Self::Qemu(qemu),
                    format!("QEMU -accel {}: {why}", accel.as_str()),
                ))
            }
        }
    }

    /// The backend for this host, as [`Backend::select`] with the host's facts.
    pub fn detect(kind: BackendKind) -> Result<Self, VmError> {
        let (backend, reason) = Self::select(kind, &KvmFacts::probe())?;
        tracing::info!(backend = backend.name(), %reason, "VM backend");
        Ok(backend)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Hull(_) => "hull",
            Self::Qemu(_) => "qemu",
        }
    }

    pub fn start(&self, config: &VmConfig) -> Result<Vm, VmError> {
        match self {
            Self::Hull(hull) => hull.start(config),
            Self::Qemu(qemu) => qemu.start(config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cpu_flag: Option<&'static str>, modules: &[&str]) -> KvmFacts {
        KvmFacts {
            cpu_flag,
            dev_kvm: true,
            modules: modules.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn auto_is_hull_with_hardware_kvm_and_qemu_tcg_on_pvm() {
        let hardware = facts(Some("svm"), &["kvm", "kvm_amd"]);
        let (backend, reason) = Backend::select(BackendKind::Auto, &hardware).expect("select");
        assert_eq!(backend.name(), "hull", "{reason}");

        let pvm = facts(None, &["kvm", "kvm_pvm"]);
        let (backend, reason) = Backend::select(BackendKind::Auto, &pvm).expect("select");
        assert!(
            matches!(&backend, Backend::Qemu(q) if q.accel == Accel::Tcg),
            "{reason}"
        );
        assert!(reason.contains("PVM"), "{reason}");
    }

    #[test]
    fn hull_without_hardware_kvm_is_refused_with_the_reason() {
        let pvm = facts(None, &["kvm", "kvm_pvm"]);
        let err = Backend::select(BackendKind::Hull, &pvm)
            .expect_err("refused")
            .to_string();
        assert!(err.starts_with("backend: "), "{err}");
        assert!(err.contains("PVM"), "{err}");
    }

    #[test]
    fn qemu_uses_kvm_where_it_can() {
        let hardware = facts(Some("vmx"), &["kvm", "kvm_intel"]);
        let (backend, _) = Backend::select(BackendKind::Qemu, &hardware).expect("select");
        assert!(matches!(backend, Backend::Qemu(q) if q.accel == Accel::Kvm));
    }

    #[test]
    fn backend_names_are_parsed_and_bad_ones_named() {
        assert_eq!("hull".parse::<BackendKind>().unwrap(), BackendKind::Hull);
        assert_eq!("auto".parse::<BackendKind>().unwrap(), BackendKind::Auto);
        let err = "firecracker"
            .parse::<BackendKind>()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("backend: \"firecracker\""), "{err}");
    }
}
