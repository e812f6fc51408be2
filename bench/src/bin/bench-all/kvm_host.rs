//! Section 2: the boot timeline in the KVM test host. The measuring is
//! `hull_bench::boot`'s (shared with `vmm-vs-qemu`); this is its report.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hull_bench::boot::{self, FIELDS};

use crate::report::{Report, ratio_of, show};
use crate::{Config, INSIDE_FLAG};

/// Bounds the whole KVM test host run.
const KVM_HOST_TIMEOUT: Duration = Duration::from_secs(900);

pub(crate) fn kvm_host(report: &mut Report, config: &Config) {
    let exe = std::env::current_exe().expect("own path");
    println!(
        "booting the KVM test host ({} runs each)...",
        config.boot_runs
    );
    let t0 = Instant::now();
    // kvm_host::run panics when the test host hangs: a result too.
    let outcome = std::panic::catch_unwind(|| {
        boot::outside(&exe, INSIDE_FLAG, config.boot_runs, KVM_HOST_TIMEOUT)
    });
    report
        .line("## 2. Boot timeline in the KVM test host: hull-vmm against QEMU microvm -accel kvm");
    report.line("");
    report.line(&format!(
        "One run of the KVM test host (tests/kvm-host/: Debian's cloud kernel under QEMU TCG \
         with emulated AMD-V, nested KVM) boots the Hull guest image (same vmlinux and \
         initramfs, 1 vCPU, 256 MiB) through hull-hypervisor, {} times with each VMM, \
         alternately: hull-vmm (with virtiofsd) and QEMU -machine microvm -accel kvm (with \
         virtiofsd and vhost-device-vsock). Medians; memory one second after agent ready, \
         with no shim (`hull_bench::boot`, the same code as `vmm-vs-qemu`). The whole test \
         host run took {:.0} s.",
        config.boot_runs,
        t0.elapsed().as_secs_f64()
    ));
    report.line("");
    match outcome {
        Ok(Ok(results)) => {
            report.line("| | hull-vmm | qemu | hull-vmm/qemu |");
            report.line("| --- | ---: | ---: | ---: |");
            for (index, label) in FIELDS.iter().enumerate() {
                let (hull, qemu) = results.get(index);
                report.line(&format!(
                    "| {label} | {} | {} | {} |",
                    show(hull, 0),
                    show(qemu, 0),
                    ratio_of(hull, qemu)
                ));
            }
            report.line("");
            report.line(&format!(
                "Boots that answered: hull-vmm {} of {}, qemu {} of {}. QEMU reports no kernel \
                 entry (hull-vmm's comes from its control channel); the first console line is \
                 the nearest common mark.",
                results.answered.0, results.runs, results.answered.1, results.runs
            ));
            for failure in &results.failures {
                report.line(&format!("- {failure}"));
            }
        }
        Ok(Err(err)) => report.line(&format!("FAILED: {}", first_lines(&err, 20))),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            report.line(&format!("FAILED: {}", first_lines(&text, 20)));
        }
    }
    report.line("");
}

fn first_lines(text: &str, count: usize) -> String {
    let mut out = String::new();
    for line in text.lines().take(count) {
        let _ = writeln!(out, "    {line}");
    }
    out
}
