//! Section 0, the header: where and how the run was made, so that its
//! ratios can be read against the machine they came from.

use hull_bench::command_output;
use hull_hypervisor::host::KvmFacts;

use crate::Config;
use crate::report::Report;

pub(crate) fn machine(report: &mut Report, config: &Config) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (accel, why) = KvmFacts::probe().choose();
    report.line("# Hull benchmarks: results");
    report.line("");
    report.line(
        "Written by `bench-all` (bench/src/bin/bench-all/). Every figure is set against a \
         peer measured in the same run; absolute times on this machine are dominated by \
         emulation, so only the ratios mean anything. Nothing here is a threshold.",
    );
    report.line("");
    report.line(&format!(
        "- date: {}",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    ));
    report.line(&format!("- command: `{}`", config.command));
    report.line(&format!(
        "- machine: {cores} cores, {model}, {:.1} GiB memory, kernel {}",
        memory_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    ));
    report.line(&format!(
        "- virtualization: the hull pods on this host run with QEMU -accel {} ({why}); \
         hull-vmm runs only in the KVM test host (section 2)",
        accel.as_str()
    ));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report.line(&format!(
        "- load average (1, 5, 15 min) when the run started: {} (not an idle machine when \
         well above zero: other work shares the cores and the figures are noisier)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    report.line(&format!(
        "- sizes: {} pod starts per runtime, {} pods for density and memory, {} MiB of dd, \
         {} small files{}",
        config.runs,
        config.pods,
        config.io_mib,
        config.files,
        if config.quick {
            " (`--quick`: a check that the runner works, not a measurement)"
        } else {
            ""
        }
    ));
    report.line("");
}
