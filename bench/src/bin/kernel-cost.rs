//! What a guest kernel configuration costs at boot: the Hull guest image
//! booted with a base vmlinux and with the current one (same initramfs,
//! 1 vCPU, 256 MiB, virtio-fs and vsock, started through hull-hypervisor
//! as a pod's VM is), alternately, on this host's backend (QEMU TCG here).
//! Prints medians and the ratio current/base and rewrites its section of
//! the results file (by default bench/RESULTS.md). Asserts nothing.
//!
//!   sudo target/release/kernel-cost --base OLD_VMLINUX [--kernel VMLINUX]
//!        [--runs N] [--out FILE]
//!
//! The base is any earlier build: guest-image/build.sh keeps each kernel
//! under /var/cache/hull/kernel/<hash of its inputs>/.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_bench::args::{number, value};
use hull_bench::results::KERNEL_COST;
use hull_bench::{command_output, median, percentile, ratio};
use hull_hypervisor::host::KvmFacts;
use hull_hypervisor::{Backend, BackendKind};
use hull_proto::v1::AGENT_VSOCK_PORT;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// One kernel's boots, in ms.
#[derive(Debug, Default)]
struct Boots {
    agent_ready: Vec<f64>,
    first_console_line: Vec<f64>,
    failed: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = PathBuf::from(value(&args, "--base").expect("--base OLD_VMLINUX is required"));
    let (current_kernel, initrd) = hull_tests::vm::guest_image();
    let kernel = value(&args, "--kernel")
        .map(PathBuf::from)
        .unwrap_or(current_kernel);
    let runs: usize = number(&args, "--runs", 10, 100);
    let out = value(&args, "--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md"));
    let facts = KvmFacts::probe();
    let (backend, why) = Backend::select(BackendKind::Auto, &facts).expect("a backend");
    let started_at = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut boots = [Boots::default(), Boots::default()];
    // One warm-up boot of each, so that neither pays for a cold page cache.
    for vmlinux in [&base, &kernel] {
        boot(&backend, vmlinux, &initrd, &mut Boots::default());
    }
    for run in 0..runs {
        for (index, vmlinux) in [&base, &kernel].into_iter().enumerate() {
            boot(&backend, vmlinux, &initrd, &mut boots[index]);
        }
        println!("run {} of {runs} done", run + 1);
    }

    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len()) as f64 / 1024.0;
    let mut body = vec![
        "## 7. Guest kernel: boot-time cost of its configuration".to_owned(),
        String::new(),
        format!(
            "Written by `kernel-cost` (bench/src/bin/kernel-cost.rs; `bench-all` keeps this \
             section). The Hull guest image (same initramfs, 1 vCPU, 256 MiB, virtio-fs and \
             vsock, started through hull-hypervisor as a pod's VM is) booted {runs} times with \
             each kernel, alternately, after one warm-up boot each, on this host's backend \
             ({}: {why}). ms; the ratio is current over base.",
            backend.name()
        ),
        String::new(),
        format!("- date: {started_at}"),
        format!(
            "- load average (1, 5, 15 min) when the run started: {}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("- base: `{}`", base.display()),
        format!("- current: `{}`", kernel.display()),
        String::new(),
        "| | base | current | current/base |".to_owned(),
        "| --- | ---: | ---: | ---: |".to_owned(),
    ];
    let mut row = |name: &str, pick: &dyn Fn(&Boots) -> f64| {
        let (a, b) = (pick(&boots[0]), pick(&boots[1]));
        body.push(format!("| {name} | {a:.0} | {b:.0} | {} |", ratio(b, a)));
    };
    row("VMM start to agent ready, median", &|b| {
        median(b.agent_ready.clone())
    });
    row("VMM start to agent ready, p95", &|b| {
        percentile(b.agent_ready.clone(), 95.0)
    });
    row("VMM start to first console line, median", &|b| {
        median(b.first_console_line.clone())
    });
    body.push(format!(
        "| vmlinux size (KiB) | {:.0} | {:.0} | {} |",
        size(&base),
        size(&kernel),
        ratio(size(&kernel), size(&base))
    ));
    body.push(String::new());
    body.push(format!(
        "Boots that answered: base {} of {runs}, current {} of {runs}.",
        boots[0].agent_ready.len(),
        boots[1].agent_ready.len()
    ));
    for (name, b) in [("base", &boots[0]), ("current", &boots[1])] {
        for failure in &b.failed {
            body.push(format!("- {name} failed: {failure}"));
        }
    }
    let section = KERNEL_COST.wrap(&body.join("\n"));
    println!("{section}");
    let old = std::fs::read_to_string(&out).unwrap_or_default();
    std::fs::write(&out, KERNEL_COST.replace(&old, &section))
        .unwrap_or_else(|err| panic!("write {}: {err}", out.display()));
    println!("wrote {}", out.display());
}

/// Boots `vmlinux` once and records when the agent answered.
fn boot(backend: &Backend, vmlinux: &Path, initrd: &Path, boots: &mut Boots) {
    let dir = tempfile::tempdir().expect("dir");
    let config = hull_bench::boot::vm_config(dir.path(), vmlinux.to_owned(), initrd.to_owned());
    let mut vm = backend.start(&config).expect("start");
    match vm.wait_for_agent(AGENT_VSOCK_PORT, BOOT_TIMEOUT) {
        Ok(_) => {
            let timeline = vm.timeline();
            let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
            if let Some(ready) = ms(timeline.agent_ready) {
                boots.agent_ready.push(ready);
            }
            if let Some(line) = ms(timeline.first_console_line) {
                boots.first_console_line.push(line);
            }
        }
        Err(err) => boots.failed.push(
            err.to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
    vm.kill();
}
