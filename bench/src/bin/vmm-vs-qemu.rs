//! `hull-vmm` against QEMU microvm (`-accel kvm`), in one KVM test host run,
//! each started the way Hull starts a pod's VM (hull-hypervisor, same kernel,
//! initrd, 256 MiB, virtio-fs through virtiofsd, hybrid vsock): time from
//! VMM start to the agent answering over vsock, hull-vmm's kernel entry, and
//! the VMM's own RSS (guest RAM excluded, from /proc/PID/smaps). Prints the
//! figures and their ratios; asserts nothing.
//!
//!   cargo run --release -p hull-bench --bin vmm-vs-qemu [-- --runs N]
//!
//! The binary re-runs itself inside the test host with `--inside`; the
//! logic lives in `hull_bench::boot`, which `bench-all` uses too.

use std::time::Duration;

use hull_bench::boot::{self, FIELDS};
use hull_bench::ratio;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .skip_while(|arg| *arg != "--runs")
        .nth(1)
        .map(|n| n.parse().expect("--runs takes a number"))
        .unwrap_or(3);
    if args.iter().any(|arg| arg == "--inside") {
        boot::inside(runs);
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let results =
        boot::outside(&exe, "--inside", runs, Duration::from_secs(1800)).unwrap_or_else(|err| {
            eprintln!("{err}");
            std::process::exit(1);
        });
    println!(
        "hull-vmm vs QEMU microvm -accel kvm, inside the KVM test host, {runs} runs each (medians)"
    );
    println!("{:<64} {:>10} {:>10} {:>8}", "", "hull", "qemu", "ratio");
    for (index, label) in FIELDS.iter().enumerate() {
        let (hull, qemu) = results.get(index);
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        println!(
            "{label:<64} {:>10} {:>10} {:>8}",
            show(hull),
            show(qemu),
            ratio(hull.unwrap_or(0.0), qemu.unwrap_or(0.0))
        );
    }
    for line in &results.failures {
        println!("{line}");
    }
}
