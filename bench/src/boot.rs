//! `hull-vmm` against QEMU microvm (`-accel kvm`) in one KVM test host run:
//! the logic behind `vmm-vs-qemu`, shared with `bench-all`.
//!
//! Each VM is started the way Hull starts a pod's VM (hull-hypervisor, same
//! kernel, initrd, 1 vCPU, 256 MiB, virtio-fs through virtiofsd, hybrid
//! vsock). The benchmark binary re-runs itself inside the test host with an
//! "inside" flag; [`inside`] prints one `RESULT` line per boot, [`outside`]
//! boots the test host and folds those lines into medians.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_hypervisor::host::KvmFacts;
use hull_hypervisor::{Backend, BackendKind, HullVmm, VmConfig};
use hull_proto::v1::AGENT_VSOCK_PORT;
use hull_tests::kvm_host;

use crate::{median, pss_of, rss_of};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The fields of a `RESULT` line after the backend's name, in order.
pub const FIELDS: [&str; 8] = [
    "VMM start to agent ready over vsock (ms)",
    "VMM start to kernel entry (ms)",
    "VMM own RSS, guest RAM excluded (KiB)",
    "guest RAM touched (KiB)",
    "helpers' RSS: virtiofsd (+ vhost-device-vsock for QEMU) (KiB)",
    "VMM start to first console line (ms)",
    "PSS of VMM + helpers, guest RAM excluded (KiB)",
    "PSS of VMM + helpers, guest RAM included (KiB)",
];

/// Boots `runs` times with each backend, alternately, and prints one line
/// per boot: `RESULT <vmm> <FIELDS...>` (`-` for what is unknown), or
/// `FAILED <vmm> <why>`.
pub fn inside(runs: usize) {
    let facts = KvmFacts::probe();
    let hull = Backend::Hull(HullVmm {
        vmm: hull_tests::workspace_binary("hull-vmm")
            .display()
            .to_string(),
        ..HullVmm::default()
    });
    let (qemu, _) = Backend::select(BackendKind::Qemu, &facts).expect("QEMU backend");
    for _ in 0..runs {
        for backend in [&hull, &qemu] {
            let dir = tempfile::tempdir().expect("dir");
            let (kernel, initrd) = hull_tests::vm::guest_image();
            let config = vm_config(dir.path(), kernel, initrd);
            let mut vm = backend.start(&config).expect("start");
            if let Err(err) = vm.wait_for_agent(AGENT_VSOCK_PORT, BOOT_TIMEOUT) {
                // A failed boot is a result too: counted, shown, and left
                // out of the medians.
                let first_line = err
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                println!("FAILED {} {first_line}", backend.name());
                vm.kill();
                continue;
            }
            let timeline = vm.timeline();
            // Let the boot's last allocations settle before reading memory.
            std::thread::sleep(Duration::from_secs(1));
            let pids = vm.pids();
            let vmm = rss_of(pids[0].1).expect("VMM smaps");
            let helpers: u64 = pids[1..]
                .iter()
                .filter_map(|(_, pid)| rss_of(*pid).ok())
                .map(|rss| rss.own_kib + rss.guest_kib)
                .sum();
            let pss = pids
                .iter()
                .filter_map(|(_, pid)| pss_of(*pid).ok())
                .fold((0, 0), |(own, guest), pss| {
                    (own + pss.own_kib, guest + pss.guest_kib)
                });
            let millis =
                |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
            println!(
                "RESULT {} {} {} {} {} {} {} {} {}",
                backend.name(),
                millis(timeline.agent_ready),
                millis(timeline.kernel_entry),
                vmm.own_kib,
                vmm.guest_kib,
                helpers,
                millis(timeline.first_console_line),
                pss.0,
                pss.0 + pss.1,
            );
            vm.kill();
        }
    }
}

/// The benchmarks' VM, in `dir`: the tests' VM (`hull_tests::vm`) with
/// `kernel` and `initrd`, 256 MiB, and its work directory in `dir`.
pub fn vm_config(dir: &Path, kernel: PathBuf, initrd: PathBuf) -> VmConfig {
    VmConfig {
        kernel,
        initrd,
        memory_mib: 256,
        work_dir: dir.join("w"),
        ..hull_tests::vm::vm_config(dir)
    }
}

/// The medians of one KVM test host run.
#[derive(Debug, Clone)]
pub struct BootResults {
    pub runs: usize,
    /// Per [`FIELDS`] entry: (hull median, qemu median); `None` when no
    /// boot reported it.
    pub medians: Vec<(Option<f64>, Option<f64>)>,
    /// How many boots of each backend answered: (hull, qemu).
    pub answered: (usize, usize),
    /// The `FAILED` lines.
    pub failures: Vec<String>,
}

/// Boots the KVM test host and runs `exe inside_flag --runs N` in it (with
/// this process's `HULL_GUEST_DIR`, if set), bounded by `timeout`.
pub fn outside(
    exe: &Path,
    inside_flag: &str,
    runs: usize,
    timeout: Duration,
) -> Result<BootResults, String> {
    let guest_dir = std::env::var("HULL_GUEST_DIR")
        .map(|dir| format!("HULL_GUEST_DIR='{dir}' "))
        .unwrap_or_default();
    let script = format!("{guest_dir}{} {inside_flag} --runs {runs}", exe.display());
    let outcome = kvm_host::run(&script, 3072, timeout);
    if outcome.exit_code != 0 {
        return Err(format!("the benchmark failed:\n{}", outcome.output));
    }
    let samples: Vec<Vec<String>> = outcome
        .output
        .lines()
        .filter_map(|line| line.strip_prefix("RESULT "))
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect();
    let column = |name: &str, index: usize| {
        let values: Vec<f64> = samples
            .iter()
            .filter(|s| s[0] == name)
            .filter_map(|s| s.get(index)?.parse::<f64>().ok())
            .collect();
        (!values.is_empty()).then(|| median(values))
    };
    let count = |name: &str| samples.iter().filter(|s| s[0] == name).count();
    Ok(BootResults {
        runs,
        medians: (1..=FIELDS.len())
            .map(|index| (column("hull", index), column("qemu", index)))
            .collect(),
        answered: (count("hull"), count("qemu")),
        failures: outcome
            .output
            .lines()
            .filter(|line| line.starts_with("FAILED "))
            .map(str::to_owned)
            .collect(),
    })
}

impl BootResults {
    /// The median of field `index` of [`FIELDS`] for hull and for qemu.
    pub fn get(&self, index: usize) -> (Option<f64>, Option<f64>) {
        self.medians.get(index).copied().unwrap_or((None, None))
    }
}
