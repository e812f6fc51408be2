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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hull_bench::boot::{self, FIELDS};
use hull_bench::{median, percentile, pss_of, ratio};
use hull_hypervisor::host::KvmFacts;
use hull_tests::containerd::{HULL_HANDLER, RUNC_HANDLER};
use hull_tests::cri::{ContainerSpec, CriClient, Pod, PodSpec};
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::{BUSYBOX_IMAGE, PAUSE_SCRIPT};

/// Bounds the wait for a container's first stdout byte (each CRI call is
/// bounded by `hull_tests::cri::CALL_TIMEOUT`).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(180);
/// Bounds each I/O script.
const IO_TIMEOUT: Duration = Duration::from_secs(600);
/// Bounds the whole KVM test host run.
const KVM_HOST_TIMEOUT: Duration = Duration::from_secs(900);
const CONCURRENCY: usize = 4;
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

fn number(args: &[String], name: &str, default: usize, max: usize) -> usize {
    args.iter()
        .skip_while(|arg| *arg != name)
        .nth(1)
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
        .clamp(1, max)
}

impl Config {
    fn from_args(args: &[String]) -> Self {
        let quick = args.iter().any(|arg| arg == "--quick");
        let (runs, pods, io_mib, files, boot_runs) = if quick {
            (2, 2, 8, 200, 1)
        } else {
            (20, 10, 256, 10_000, 3)
        };
        let out = args
            .iter()
            .skip_while(|arg| *arg != "--out")
            .nth(1)
            .map(PathBuf::from)
            .or_else(|| (!quick).then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")));
        let command = args
            .iter()
            .skip_while(|arg| *arg != "--command")
            .nth(1)
            .cloned()
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

/// The report: markdown, printed as it grows, and written in the order of
/// its sections (0 the header, then the issue's 1 to 5) whatever order they
/// ran in.
#[derive(Default)]
struct Report {
    sections: [String; 7],
    current: usize,
}

impl Report {
    fn section(&mut self, index: usize) {
        self.current = index;
    }

    fn line(&mut self, line: &str) {
        println!("{line}");
        let text = &mut self.sections[self.current];
        text.push_str(line);
        text.push('\n');
    }

    fn text(&self) -> String {
        self.sections.concat()
    }
}

fn show(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn ratio_of(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => "-".to_owned(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == INSIDE_FLAG) {
        boot::inside(number(&args, "--runs", 1, 10));
        return;
    }
    let config = Config::from_args(&args);
    let started = Instant::now();
    let mut report = Report::default();
    machine(&mut report, &config);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(pods(&mut report, &config));
    drop(runtime);

    report.section(2);
    if config.kvm_host {
        kvm_host(&mut report, &config);
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
        std::fs::write(out, report.text())
            .unwrap_or_else(|err| panic!("write {}: {err}", out.display()));
        println!("wrote {}", out.display());
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine(report: &mut Report, config: &Config) {
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
        "Written by `bench-all` (bench/src/bin/bench-all.rs). Every figure is set against a \
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

/// The timings of one pod start, in ms from before RunPodSandbox.
#[derive(Debug, Clone, Copy)]
struct Start {
    sandbox: f64,
    created: f64,
    started: f64,
    first_byte: f64,
}

/// Which of a [`Start`]'s timings.
type Pick = fn(&Start) -> f64;

/// RunPodSandbox, CreateContainer (`echo`), StartContainer, then polls the
/// CRI log until its first stdout byte.
async fn start_pod(
    client: &mut CriClient,
    name: &str,
    handler: &str,
    logs: &Path,
) -> Result<(Pod, Start), String> {
    let spec = PodSpec::new(name, handler, logs);
    let t0 = Instant::now();
    let ms = |t0: Instant| t0.elapsed().as_secs_f64() * 1000.0;
    let pod = client
        .run_pod(&spec)
        .await
        .map_err(|err| format!("RunPodSandbox {name}: {err}"))?;
    let sandbox = ms(t0);
    let container = ContainerSpec::new("first", BUSYBOX_IMAGE, &["echo", "first"]);
    let id = client
        .create_container(&pod, &container)
        .await
        .map_err(|err| format!("CreateContainer {name}: {err}"))?;
    let created = ms(t0);
    client
        .start_container(&id)
        .await
        .map_err(|err| format!("StartContainer {name}: {err}"))?;
    let started = ms(t0);
    let log = pod.log_file(&container.log_path());
    loop {
        if hull_tests::cri::read_log(&log)
            .iter()
            .any(|line| line.stream == "stdout" && !line.content.is_empty())
        {
            break;
        }
        if t0.elapsed() > FIRST_BYTE_TIMEOUT {
            return Err(format!("{name}: no stdout in {FIRST_BYTE_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((
        pod,
        Start {
            sandbox,
            created,
            started,
            first_byte: ms(t0),
        },
    ))
}

async fn remove(client: &mut CriClient, pod: &Pod) {
    let _ = client.stop_pod(&pod.id).await;
    let _ = client.remove_pod(&pod.id).await;
}

const RUNTIMES: [(&str, &str); 2] = [("hull", HULL_HANDLER), ("runc", RUNC_HANDLER)];

async fn pods(report: &mut Report, config: &Config) {
    let rt = HullRuntime::start("hull-bench", true);
    let mut client = CriClient::connect(rt.containerd.cri_socket()).await;
    client.wait_for_test_images().await;
    let logs = rt.state_dir.with_file_name("logs");

    pod_start(report, config, &mut client, &logs).await;
    density_and_memory(report, config, &rt, &client, &logs).await;
    io(report, config, &mut client, &logs).await;
}

async fn pod_start(report: &mut Report, config: &Config, client: &mut CriClient, logs: &Path) {
    // One warm-up start each (caches, the first shim), not counted.
    let mut samples: HashMap<&str, Vec<Start>> = HashMap::new();
    let mut failures = Vec::new();
    for run in 0..=config.runs {
        for (name, handler) in RUNTIMES {
            match start_pod(client, &format!("start-{name}-{run}"), handler, logs).await {
                Ok((pod, start)) => {
                    println!(
                        "  {name} run {run}{}: first stdout byte after {:.0} ms",
                        if run == 0 { " (warm-up)" } else { "" },
                        start.first_byte
                    );
                    if run > 0 {
                        samples.entry(name).or_default().push(start);
                    }
                    remove(client, &pod).await;
                }
                Err(err) => {
                    println!("  FAILED {err}");
                    failures.push(err);
                }
            }
        }
    }
    let column = |name: &str, pick: Pick| -> Vec<f64> {
        samples
            .get(name)
            .map(|s| s.iter().map(pick).collect())
            .unwrap_or_default()
    };
    report.section(1);
    report.line("## 1. Pod start: CRI RunPodSandbox to the first stdout byte");
    report.line("");
    report.line(&format!(
        "{} runs each after one warm-up, alternately; the container is busybox `echo first`; \
         the time runs from before RunPodSandbox to the first stdout byte in the CRI log \
         (polled every 5 ms). Pods on the node network. ms.",
        config.runs
    ));
    report.line("");
    report.line("| | hull | runc | hull/runc |");
    report.line("| --- | ---: | ---: | ---: |");
    let phases: [(&str, Pick); 4] = [
        ("RunPodSandbox returned", |s| s.sandbox),
        ("CreateContainer returned", |s| s.created),
        ("StartContainer returned", |s| s.started),
        ("first stdout byte", |s| s.first_byte),
    ];
    for (label, pick) in phases {
        let (hull, runc) = (median(column("hull", pick)), median(column("runc", pick)));
        report.line(&format!(
            "| {label}, median | {hull:.0} | {runc:.0} | {} |",
            ratio(hull, runc)
        ));
    }
    let (hull, runc) = (
        percentile(column("hull", |s| s.first_byte), 95.0),
        percentile(column("runc", |s| s.first_byte), 95.0),
    );
    report.line(&format!(
        "| first stdout byte, p95 | {hull:.0} | {runc:.0} | {} |",
        ratio(hull, runc)
    ));
    report.line("");
    for failure in failures {
        report.line(&format!("- FAILED {failure}"));
    }
}

/// Every process below `root` (children of children, ...) with `root`.
fn with_descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after `(comm)`: state, ppid, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        if let Some(kids) = children.get(&found[index]) {
            found.extend(kids);
        }
        index += 1;
    }
    found
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}

/// PSS of every shim and its descendants: (own KiB, guest RAM KiB, and
/// per process name the own + guest KiB).
fn memory_of_shims(shims: &[i32]) -> (u64, u64, Vec<(String, u64)>) {
    let (mut own, mut guest) = (0, 0);
    let mut by_name: Vec<(String, u64)> = Vec::new();
    for shim in shims {
        for pid in with_descendants(*shim as u32) {
            let Ok(pss) = pss_of(pid) else { continue };
            own += pss.own_kib;
            guest += pss.guest_kib;
            let name = comm(pid);
            match by_name.iter_mut().find(|(n, _)| *n == name) {
                Some((_, kib)) => *kib += pss.own_kib + pss.guest_kib,
                None => by_name.push((name, pss.own_kib + pss.guest_kib)),
            }
        }
    }
    (own, guest, by_name)
}

/// Per-pod memory of one runtime: (own, with guest RAM, processes).
type Memory = (f64, f64, String);

async fn density_and_memory(
    report: &mut Report,
    config: &Config,
    rt: &HullRuntime,
    client: &CriClient,
    logs: &Path,
) {
    let mut rates = HashMap::new();
    let mut memory: HashMap<&str, Memory> = HashMap::new();
    let mut failures = Vec::new();
    for (name, handler) in RUNTIMES {
        let before: Vec<i32> = rt.containerd.shim_pids();
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..CONCURRENCY {
            let mut client = client.clone();
            let next = next.clone();
            let logs = logs.to_owned();
            let total = config.pods;
            workers.push(tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    if index >= total {
                        return done;
                    }
                    let pod_name = format!("density-{name}-{index}");
                    done.push(start_pod(&mut client, &pod_name, handler, &logs).await);
                }
            }));
        }
        let mut pods = Vec::new();
        for worker in workers {
            for result in worker.await.expect("density worker") {
                match result {
                    Ok((pod, _)) => pods.push(pod),
                    Err(err) => {
                        println!("  FAILED {err}");
                        failures.push(err);
                    }
                }
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        println!(
            "  {name}: {} pods to first stdout byte in {seconds:.1} s at concurrency {CONCURRENCY}",
            pods.len()
        );
        rates.insert(name, (pods.len() as f64 / seconds, pods.len(), seconds));

        // The pods stand idle now (their `echo` has exited): let them settle.
        tokio::time::sleep(Duration::from_secs(if config.quick { 2 } else { 10 })).await;
        let shims: Vec<i32> = rt
            .containerd
            .shim_pids()
            .into_iter()
            .filter(|pid| !before.contains(pid))
            .collect();
        let (own, guest, by_name) = memory_of_shims(&shims);
        let count = pods.len().max(1) as f64;
        let processes = by_name
            .iter()
            .map(|(process, kib)| format!("{process} {:.0}", *kib as f64 / count))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  {name}: {} shims; per pod PSS {:.0} KiB without guest RAM, {:.0} KiB with ({processes})",
            shims.len(),
            own as f64 / count,
            (own + guest) as f64 / count
        );
        memory.insert(
            name,
            (own as f64 / count, (own + guest) as f64 / count, processes),
        );

        // Tear down at the same concurrency.
        let pods = Arc::new(std::sync::Mutex::new(pods));
        let mut removers = Vec::new();
        for _ in 0..CONCURRENCY {
            let mut client = client.clone();
            let pods = pods.clone();
            removers.push(tokio::spawn(async move {
                loop {
                    let pod = pods.lock().expect("pods").pop();
                    let Some(pod) = pod else { return };
                    remove(&mut client, &pod).await;
                }
            }));
        }
        for remover in removers {
            let _ = remover.await;
        }
    }

    report.section(4);
    report.line(&format!(
        "## 4. Density: pods started per second at a concurrency of {CONCURRENCY}"
    ));
    report.line("");
    report.line(&format!(
        "{} pods per runtime, {CONCURRENCY} CRI clients each starting one pod after another \
         (RunPodSandbox to the first stdout byte, as in section 1; the pods stay up for section 3); pods started over the \
         wall time from the first RunPodSandbox to the last first byte.",
        config.pods
    ));
    report.line("");
    report.line("| | hull | runc | hull/runc |");
    report.line("| --- | ---: | ---: | ---: |");
    let (hull, runc) = (rates["hull"], rates["runc"]);
    report.line(&format!(
        "| pods per second | {:.2} | {:.2} | {} |",
        hull.0,
        runc.0,
        ratio(hull.0, runc.0)
    ));
    report.line(&format!(
        "| pods started, in seconds | {} in {:.1} | {} in {:.1} | |",
        hull.1, hull.2, runc.1, runc.2
    ));
    report.line("");

    report.section(3);
    report.line("## 3. Host memory per idle pod");
    report.line("");
    report.line(&format!(
        "PSS (Pss: lines of /proc/PID/smaps) of every pod's shim and all its descendants, \
         summed over the {} idle pods that the density run (section 4) left standing and divided by their \
         number, {} s after the last one started (section 4). hull: containerd-shim-hull-v2, the VMM \
         (QEMU -machine microvm under TCG on this host), virtiofsd and vhost-device-vsock; \
         guest RAM is the VMM's memfd mapping, which virtiofsd and vhost-device-vsock map too \
         (so PSS shares it out between them). runc: containerd-shim-runc-v2 and the pause \
         process (here busybox sh and sleep). Each pod has one exited container. KiB.",
        config.pods,
        if config.quick { 2 } else { 10 }
    ));
    report.line("");
    report.line("| per pod | hull | runc | hull/runc |");
    report.line("| --- | ---: | ---: | ---: |");
    let (hull, runc) = (&memory["hull"], &memory["runc"]);
    report.line(&format!(
        "| PSS without guest RAM | {:.0} | {:.0} | {} |",
        hull.0,
        runc.0,
        ratio(hull.0, runc.0)
    ));
    report.line(&format!(
        "| PSS with guest RAM | {:.0} | {:.0} | {} |",
        hull.1,
        runc.1,
        ratio(hull.1, runc.1)
    ));
    report.line("");
    report.line(&format!("- hull, per process name: {}", hull.2));
    report.line(&format!("- runc, per process name: {}", runc.2));
    for failure in failures {
        report.line(&format!("- FAILED {failure}"));
    }
    report.line("");
}

/// The I/O script: prints `<name> <seconds>` per step, timed with the
/// container's /proc/uptime (a VM's own clock for hull).
fn io_script(mib: u32, files: u32) -> String {
    format!(
        r#"set -e
t() {{ read up idle < /proc/uptime; echo $up; }}
step() {{ echo "$1 $(echo "$3 $2" | awk '{{printf "%.2f", $1 - $2}}')"; }}
rm -rf /bench.dat /bench.d
s=$(t); dd if=/dev/zero of=/bench.dat bs=1M count={mib} conv=fsync 2>/dev/null; e=$(t); step write $s $e
s=$(t); dd if=/bench.dat of=/dev/null bs=1M 2>/dev/null; e=$(t); step read $s $e
rm -f /bench.dat
mkdir /bench.d
s=$(t); i=0; while [ $i -lt {files} ]; do echo x > /bench.d/f$i; i=$((i+1)); done; e=$(t); step create $s $e
s=$(t); i=0; while [ $i -lt {files} ]; do [ -f /bench.d/f$i ]; i=$((i+1)); done; e=$(t); step stat $s $e
s=$(t); rm -r /bench.d; e=$(t); step delete $s $e
echo done
"#
    )
}

async fn io(report: &mut Report, config: &Config, client: &mut CriClient, logs: &Path) {
    let script = io_script(config.io_mib, config.files);
    let mut results: HashMap<&str, HashMap<String, f64>> = HashMap::new();
    let mut failures = Vec::new();
    for (name, handler) in RUNTIMES {
        let spec = PodSpec::new(&format!("io-{name}"), handler, logs);
        let pod = match client.run_pod(&spec).await {
            Ok(pod) => pod,
            Err(err) => {
                failures.push(format!("{name} RunPodSandbox: {err}"));
                continue;
            }
        };
        let idle = ContainerSpec::new("io", BUSYBOX_IMAGE, &["sh", "-c", PAUSE_SCRIPT]);
        let outcome = match client.run_container(&pod, &idle).await {
            Ok(id) => client
                .exec_sync(&id, &["sh", "-c", &script], IO_TIMEOUT)
                .await
                .map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match outcome {
            Ok(out) if out.stdout.contains("done") => {
                println!("  {name}: {}", out.stdout.trim().replace('\n', ", "));
                let steps = results.entry(name).or_default();
                for line in out.stdout.lines() {
                    if let Some((step, seconds)) = line.split_once(' ')
                        && let Ok(seconds) = seconds.parse::<f64>()
                    {
                        steps.insert(step.to_owned(), seconds);
                    }
                }
            }
            Ok(out) => failures.push(format!(
                "{name}: exit {} {} {}",
                out.exit_code, out.stdout, out.stderr
            )),
            Err(err) => failures.push(format!("{name}: {err}")),
        }
        remove(client, &pod).await;
    }
    report.section(5);
    report.line("## 5. I/O in the container's root filesystem");
    report.line("");
    report.line(&format!(
        "One exec (CRI ExecSync of busybox sh) per runtime, timed inside the container with \
         /proc/uptime (10 ms resolution; the guest's clock for hull). The root filesystem is \
         virtio-fs (virtiofsd) for hull, overlayfs on the host's disk for runc. dd of {mib} MiB \
         in 1 MiB blocks to `/bench.dat` with `conv=fsync`, then read back at once (so the \
         read may come from the page cache: the guest's for hull, the host's for runc); \
         {files} files of 2 bytes created with `echo x >` (the shell's own redirection, no \
         fork), tested with `[ -f ]` (one stat each), deleted with one `rm -r`. Speeds in \
         MiB/s and files per second; the ratio is hull's speed over runc's.",
        mib = config.io_mib,
        files = config.files
    ));
    report.line("");
    report.line("| | hull | runc | hull/runc |");
    report.line("| --- | ---: | ---: | ---: |");
    let rate = |name: &str, step: &str, amount: f64| -> Option<f64> {
        let seconds = *results.get(name)?.get(step)?;
        // /proc/uptime ticks in 10 ms: never divide by less.
        Some(amount / seconds.max(0.01))
    };
    let mib = f64::from(config.io_mib);
    let files = f64::from(config.files);
    for (label, step, amount) in [
        ("sequential write (MiB/s)", "write", mib),
        ("sequential read (MiB/s)", "read", mib),
        ("create (files/s)", "create", files),
        ("stat (files/s)", "stat", files),
        ("delete (files/s)", "delete", files),
    ] {
        let (hull, runc) = (rate("hull", step, amount), rate("runc", step, amount));
        report.line(&format!(
            "| {label} | {} | {} | {} |",
            show(hull, 1),
            show(runc, 1),
            ratio_of(hull, runc)
        ));
    }
    report.line("");
    for failure in failures {
        println!("  FAILED {failure}");
        report.line(&format!("- FAILED {failure}"));
    }
}

fn kvm_host(report: &mut Report, config: &Config) {
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
