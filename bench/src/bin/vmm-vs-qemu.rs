//! `hull-vmm` against QEMU microvm (`-accel kvm`), in one KVM test host run,
//! each started the way Hull starts a pod's VM (hull-hypervisor, same kernel,
//! initrd, 256 MiB, virtio-fs through virtiofsd, hybrid vsock): time from
//! VMM start to the agent answering over vsock, hull-vmm's kernel entry, and
//! the VMM's own RSS (guest RAM excluded, from /proc/PID/smaps). Prints the
//! figures and their ratios; asserts nothing.
//!
//!   cargo run --release -p hull-bench --bin vmm-vs-qemu [-- --runs N]
//!
//! The binary re-runs itself inside the test host with `--inside`.

use std::time::Duration;

use hull_bench::{median, ratio, rss_of};
use hull_hypervisor::host::KvmFacts;
use hull_hypervisor::{Backend, BackendKind, HullVmm, VmConfig};
use hull_proto::v1::AGENT_VSOCK_PORT;
use hull_tests::kvm_host;

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .skip_while(|arg| *arg != "--runs")
        .nth(1)
        .map(|n| n.parse().expect("--runs takes a number"))
        .unwrap_or(3);
    if args.iter().any(|arg| arg == "--inside") {
        inside(runs);
    } else {
        outside(runs);
    }
}

/// One sample line per boot: `RESULT <vmm> <agent ms> <kernel entry ms or -> <own KiB> <guest KiB> <helpers KiB>`.
fn inside(runs: usize) {
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
            let shared_dir = dir.path().join("shared");
            std::fs::create_dir_all(&shared_dir).expect("shared dir");
            let config = VmConfig {
                kernel,
                initrd,
                vcpus: 1,
                memory_mib: 256,
                shared_dir,
                console_log: dir.path().join("console.log"),
                work_dir: dir.path().join("w"),
                net: Vec::new(),
            };
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
            // Let the boot's last allocations settle before reading RSS.
            std::thread::sleep(Duration::from_secs(1));
            let pids = vm.pids();
            let vmm = rss_of(pids[0].1).expect("VMM smaps");
            let helpers: u64 = pids[1..]
                .iter()
                .filter_map(|(_, pid)| rss_of(*pid).ok())
                .map(|rss| rss.own_kib + rss.guest_kib)
                .sum();
            let millis =
                |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
            println!(
                "RESULT {} {} {} {} {} {}",
                backend.name(),
                millis(timeline.agent_ready),
                millis(timeline.kernel_entry),
                vmm.own_kib,
                vmm.guest_kib,
                helpers
            );
            vm.kill();
        }
    }
}

fn outside(runs: usize) {
    let exe = std::env::current_exe().expect("own path");
    let script = format!("{} --inside --runs {runs}", exe.display());
    let outcome = kvm_host::run(&script, 3072, Duration::from_secs(1800));
    if outcome.exit_code != 0 {
        eprintln!("the benchmark failed:\n{}", outcome.output);
        std::process::exit(1);
    }
    let samples: Vec<Vec<String>> = outcome
        .output
        .lines()
        .filter_map(|line| line.strip_prefix("RESULT "))
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect();
    let column = |name: &str, index: usize| {
        median(
            samples
                .iter()
                .filter(|s| s[0] == name)
                .filter_map(|s| s.get(index)?.parse::<f64>().ok())
                .collect(),
        )
    };
    println!(
        "hull-vmm vs QEMU microvm -accel kvm, inside the KVM test host, {runs} runs each (medians)"
    );
    println!("{:<44} {:>10} {:>10} {:>8}", "", "hull", "qemu", "ratio");
    for (label, index) in [
        ("VMM start to agent ready over vsock (ms)", 1),
        ("VMM own RSS, guest RAM excluded (KiB)", 3),
        ("guest RAM touched (KiB)", 4),
        ("helpers' RSS: virtiofsd (+vhost-device-vsock)", 5),
    ] {
        let (hull, qemu) = (column("hull", index), column("qemu", index));
        println!(
            "{label:<44} {hull:>10.0} {qemu:>10.0} {:>8}",
            ratio(hull, qemu)
        );
    }
    println!(
        "hull-vmm kernel entry after VMM start (ms): {:.0}",
        column("hull", 2)
    );
    for line in outcome
        .output
        .lines()
        .filter(|line| line.starts_with("FAILED "))
    {
        println!("{line}");
    }
}
