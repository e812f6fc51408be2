//! What the host can do for VMs: is /dev/kvm backed by hardware
//! virtualization, or must QEMU emulate (TCG)?

use std::path::Path;

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// The host's TSC rate in kHz, measured against the monotonic clock.
///
/// Under TCG the guest's TSC is the host's, but a guest kernel on QEMU's
/// microvm has only the emulated PIT to calibrate it against, and that
/// calibration fails now and then on a busy host: the kernel then marks the
/// TSC unstable and hangs. Telling it the rate (`tsc_early_khz=`), as kvmclock
/// does under KVM, makes the boot deterministic.
pub fn tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let window = std::time::Duration::from_millis(50);
        let start = std::time::Instant::now();
        let first = read_tsc();
        while start.elapsed() < window {
            std::hint::spin_loop();
        }
        let ticks = read_tsc().wrapping_sub(first);
        let micros = start.elapsed().as_micros() as u64;
        (micros > 0).then(|| ticks * 1000 / micros)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(target_arch = "x86_64")]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; it touches no memory
    // and every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The facts the choice rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmFacts {
    /// "vmx" or "svm" when /proc/cpuinfo has the flag.
    pub cpu_flag: Option<&'static str>,
    pub dev_kvm: bool,
    /// Loaded KVM modules, built in or not: kvm, kvm_intel, kvm_amd, kvm_pvm.
    pub modules: Vec<String>,
}

impl KvmFacts {
    /// Reads the facts from /proc/cpuinfo, /dev/kvm and /sys/module.
    pub fn probe() -> Self {
        Self::probe_at(Path::new("/"))
    }

    /// The same, below `root` (for tests).
    pub fn probe_at(root: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        let flags = cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .flat_map(|line| line.split_whitespace());
        let mut cpu_flag = None;
        for flag in flags {
            match flag {
                "vmx" => cpu_flag = Some("vmx"),
                "svm" => cpu_flag = Some("svm"),
                _ => {}
            }
        }
        let modules = ["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"]
            .into_iter()
            .filter(|module| root.join("sys/module").join(module).exists())
            .map(str::to_owned)
            .collect();
        Self {
            cpu_flag,
            dev_kvm: root.join("dev/kvm").exists(),
            modules,
        }
    }

    pub fn has_module(&self, module: &str) -> bool {
        self.modules.iter().any(|m| m == module)
    }

    /// KVM can run an ordinary guest only with hardware virtualization. A
    /// PVM /dev/kvm (`kvm_pvm`, no vmx/svm) runs a normal guest in its
    /// instruction emulator, where Linux cannot boot.
    pub fn choose(&self) -> (Accel, String) {
        if !self.dev_kvm {
            return (Accel::Tcg, "/dev/kvm does not exist".into());
        }
        if self.has_module("kvm_pvm") && self.cpu_flag.is_none() {
            return (
                Accel::Tcg,
                "/dev/kvm is PVM (kvm_pvm, no vmx/svm flag): it cannot run a normal guest".into(),
            );
        }
        match self.cpu_flag {
            Some(flag) => (
                Accel::Kvm,
                format!("/dev/kvm with hardware virtualization ({flag})"),
            ),
            None => (Accel::Tcg, "the CPU has no vmx or svm flag".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(flags: &str, kvm: bool, modules: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(root.path().join("proc")).expect("proc");
        std::fs::write(
            root.path().join("proc/cpuinfo"),
            format!("processor : 0\nflags : fpu {flags}\n"),
        )
        .expect("cpuinfo");
        std::fs::create_dir_all(root.path().join("dev")).expect("dev");
        if kvm {
            std::fs::write(root.path().join("dev/kvm"), "").expect("kvm");
        }
        for module in modules {
            std::fs::create_dir_all(root.path().join("sys/module").join(module)).expect("module");
        }
        root
    }

    #[test]
    fn pvm_without_hardware_flags_falls_back_to_tcg() {
        let root = host("sse2 hypervisor", true, &["kvm", "kvm_pvm"]);
        let facts = KvmFacts::probe_at(root.path());
        assert_eq!(facts.modules, ["kvm", "kvm_pvm"]);
        let (accel, reason) = facts.choose();
        assert_eq!(accel, Accel::Tcg);
        assert!(reason.contains("PVM"), "{reason}");
    }

    #[test]
    fn hardware_kvm_is_used() {
        let root = host("sse2 svm", true, &["kvm", "kvm_amd"]);
        assert_eq!(KvmFacts::probe_at(root.path()).choose().0, Accel::Kvm);
    }

    #[test]
    fn the_tsc_rate_is_measured() {
        let khz = tsc_khz().expect("an x86_64 host has a TSC");
        // Any CPU of the last two decades: between 100 MHz and 10 GHz.
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
    }

    #[test]
    fn no_dev_kvm_means_tcg() {
        let root = host("vmx", false, &[]);
        let (accel, reason) = KvmFacts::probe_at(root.path()).choose();
        assert_eq!(accel, Accel::Tcg);
        assert!(reason.contains("/dev/kvm does not exist"));
    }
}
