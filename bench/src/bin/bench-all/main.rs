//! Every benchmark of issue 8 in one run, each figure a ratio against a
//! peer measured in the same run; prints a table and writes a results file
//! (by default bench/RESULTS.md). Asserts nothing.
//!
//!   sudo bash bench/run.sh            # builds release binaries, runs this
//!   sudo target/release/bench-all [--quick] [--out FILE] [--skip-kvm-host]
//!       [--runs N] [--pods N] [--io-mib N] [--files N] [--boot-runs N]
//!
//! 1. pod start (CRI RunPodSandbox → CreateContainer → StartContainer →
//!    first stdout byte in the CRI log), hull against runc;
//! 2. the boot timeline in the KVM test host, hull-vmm against QEMU microvm
//!    `-accel kvm` (`hull_bench::boot`, as `vmm-vs-qemu`);
//! 3. density: pods started per second at a concurrency of 4;
//! 4. host memory per idle pod (PSS from /proc/PID/smaps, with and without
//!    the guest-RAM memfd), of the pods that the density run left standing;
//! 5. I/O in a container's root filesystem (virtio-fs for hull): dd of a
//!    file, and creating, stat-ing and deleting small files.
//!
//! On a host without hardware virtualization (a PVM /dev/kvm here) the hull
//! pods run under QEMU TCG: the runner says so in the results.

mod density;
mod io;
mod kvm_host;
mod machine;
mod memory;
mod pod_start;
mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use hull_bench::args::{number, value};
use hull_tests::containerd::{HULL_HANDLER, RUNC_HANDLER};
use hull_tests::cri::CriClient;
use hull_tests::hull_runtime::HullRuntime;

use crate::report::Report;

/// What the KVM test host runs this same binary with, to boot in its guest
/// (`hull_bench::boot::outside`).
const INSIDE_FLAG: &str = "--boot-inside";

#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    runs: usize,
    pods: usize,
    io_mib: u32,
    files: u32,
    boot_runs: usize,
    kvm_host: bool,
    out: Option<PathBuf>,
    command: String,
}

impl Config {
    fn from_args(args: &[String]) -> Self {
        let quick = args.iter().any(|arg| arg == "--quick");
        let (runs, pods, io_mib, files, boot_runs) = if quick {
            (2, 2, 8, 200, 1)
        } else {
            (20, 10, 256, 10_000, 3)
        };
        let out = value(args, "--out")
            .map(PathBuf::from)
            .or_else(|| (!quick).then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")));
        let command = value(args, "--command")
            .map(str::to_owned)
            .unwrap_or_else(|| args.join(" "));
        Self {
            quick,
            runs: number(args, "--runs", runs, 50),
            pods: number(args, "--pods", pods, 20),
            io_mib: number(args, "--io-mib", io_mib as usize, 1024) as u32,
            files: number(args, "--files", files as usize, 50_000) as u32,
            boot_runs: number(args, "--boot-runs", boot_runs, 10),
            kvm_host: !args.iter().any(|arg| arg == "--skip-kvm-host"),
            out,
            command,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == INSIDE_FLAG) {
        hull_bench::boot::inside(number(&args, "--runs", 1, 10));
        return;
    }
    let config = Config::from_args(&args);
    let started = Instant::now();
    let mut report = Report::default();
    machine::machine(&mut report, &config);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(pods(&mut report, &config));
    drop(runtime);

    report.section(2);
    if config.kvm_host {
        kvm_host::kvm_host(&mut report, &config);
    } else {
        report.line("## 2. Boot timeline in the KVM test host");
        report.line("");
        report.line("Skipped (`--skip-kvm-host`).");
        report.line("");
    }
    report.section(6);
    report.line(&format!(
        "The whole run took {:.0} s.",
        started.elapsed().as_secs_f64()
    ));
    if let Some(out) = &config.out {
        // The soak (`bench/run.sh --soak N`) and the kernel's cost
        // (`kernel-cost`) have sections of their own that a full run keeps.
        let old = std::fs::read_to_string(out).unwrap_or_default();
        let text = hull_bench::results::keep_sections(&old, &report.text());
        std::fs::write(out, text).unwrap_or_else(|err| panic!("write {}: {err}", out.display()));
        println!("wrote {}", out.display());
    }
}

const RUNTIMES: [(&str, &str); 2] = [("hull", HULL_HANDLER), ("runc", RUNC_HANDLER)];

async fn pods(report: &mut Report, config: &Config) {
    let rt = HullRuntime::start("hull-bench", true);
    let mut client = CriClient::connect(rt.containerd.cri_socket()).await;
    client.wait_for_test_images().await;
    let logs = rt.state_dir.with_file_name("logs");

    pod_start::pod_start(report, config, &mut client, &logs).await;
    density::density_and_memory(report, config, &rt, &client, &logs).await;
    io::io(report, config, &mut client, &logs).await;
}
