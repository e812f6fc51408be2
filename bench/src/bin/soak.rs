//! The 1,000-cycle soak of issue 9: `hull_tests::soak`'s CRI pod
//! create/delete cycle, run `--cycles` times against one private
//! containerd, with the leak check (`hull_tests::leaks`) every
//! `--check-every` cycles. Prints each checkpoint and rewrites its section
//! of the results file (by default bench/RESULTS.md) at each, so a run cut
//! short still leaves a real, partial result. Asserts nothing.
//!
//!   sudo bash bench/run.sh --soak 1000
//!   sudo target/release/soak [--cycles N] [--check-every N] [--out FILE]

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::FutureExt;
use hull_bench::args::{number, value};
use hull_bench::command_output;
use hull_bench::results::SOAK;
use hull_tests::leaks::{Kind, Leaks, Snapshot};
use hull_tests::soak::{CycleError, Soak};

/// Consecutive failed cycles after which the run stops: the runtime is
/// broken, and more cycles would only repeat that.
const MAX_FAILURES_IN_A_ROW: usize = 5;

#[derive(Debug)]
struct Config {
    cycles: usize,
    check_every: usize,
    out: PathBuf,
    command: String,
}

/// One leak check.
#[derive(Debug)]
struct Checkpoint {
    after_cycle: usize,
    elapsed: Duration,
    leaks: Leaks,
    containerd_rss_kib: u64,
    containerd_fds: usize,
}

#[derive(Debug, Default)]
struct Progress {
    started_at: String,
    load: String,
    done: usize,
    failures: Vec<String>,
    times: Vec<Duration>,
    baseline: Snapshot,
    checkpoints: Vec<Checkpoint>,
    finished: Option<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config = Config {
        cycles: number(&args, "--cycles", 1000, 100_000),
        check_every: number(&args, "--check-every", 50, 100_000),
        out: value(&args, "--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")),
        command: value(&args, "--command")
            .map(str::to_owned)
            .unwrap_or_else(|| args.join(" ")),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(&config));
}

async fn run(config: &Config) {
    let mut progress = Progress {
        started_at: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        load: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", "),
        ..Default::default()
    };
    let mut soak = Soak::start("hull-soak").await;
    // The first cycle leaves what every later one reuses (the CNI
    // bridge's IPAM record, CRI's directories): the baseline comes after it.
    if let Err(err) = soak.cycle(0).await {
        progress.finished = Some(format!("stopped: the warm-up cycle failed: {err}"));
        write(config, &progress);
        eprintln!(
            "{err}\ncontainerd log:\n{}",
            soak.rt.containerd.log_tail(60)
        );
        std::process::exit(1);
    }
    progress.baseline = soak.baseline();
    println!("baseline: {}", counts_line(&progress.baseline));
    let started = Instant::now();
    let mut in_a_row = 0;
    for cycle in 1..=config.cycles {
        // A panic in the harness (a CRI status call that failed) is one
        // failed cycle, not the end of an hour's run.
        let result = AssertUnwindSafe(soak.cycle(cycle)).catch_unwind().await;
        let result = result.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Err(CycleError {
                cycle,
                step: "harness panic",
                detail: message,
            })
        });
        match result {
            Ok(took) => {
                progress.times.push(took);
                in_a_row = 0;
            }
            Err(err) => {
                println!("FAILED {err}");
                progress.failures.push(err.to_string());
                in_a_row += 1;
            }
        }
        progress.done = cycle;
        if cycle % 10 == 0 {
            println!("{cycle} cycles in {:.0} s", started.elapsed().as_secs_f64());
        }
        let last = cycle == config.cycles || in_a_row >= MAX_FAILURES_IN_A_ROW;
        if cycle % config.check_every == 0 || last {
            let checkpoint = check(&soak, &progress.baseline, cycle, started.elapsed());
            println!(
                "after {cycle} cycles: {} leaked; containerd RSS {} KiB, {} fds",
                checkpoint.leaks.items.len(),
                checkpoint.containerd_rss_kib,
                checkpoint.containerd_fds
            );
            if !checkpoint.leaks.is_empty() {
                println!("{}", checkpoint.leaks);
            }
            progress.checkpoints.push(checkpoint);
            if in_a_row >= MAX_FAILURES_IN_A_ROW {
                progress.finished = Some(format!(
                    "stopped after {MAX_FAILURES_IN_A_ROW} failed cycles in a row"
                ));
            } else if last {
                progress.finished = Some("complete".to_owned());
            }
            write(config, &progress);
            if progress.finished.is_some() {
                break;
            }
        }
    }
}

fn check(soak: &Soak, baseline: &Snapshot, cycle: usize, elapsed: Duration) -> Checkpoint {
    let leaks = soak.leaks_since(baseline);
    let pid = soak.rt.containerd.pid();
    Checkpoint {
        after_cycle: cycle,
        elapsed,
        leaks,
        containerd_rss_kib: hull_bench::rss_of(pid).map_or(0, |rss| rss.own_kib + rss.guest_kib),
        containerd_fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
    }
}

fn counts_line(snapshot: &Snapshot) -> String {
    snapshot
        .counts()
        .iter()
        .map(|(kind, count)| format!("{} {count}", kind.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index].as_secs_f64()
}

/// The soak section, as it stands, into the results file.
fn write(config: &Config, progress: &Progress) {
    let section = section(config, progress);
    let old = std::fs::read_to_string(&config.out).unwrap_or_default();
    std::fs::write(&config.out, SOAK.replace(&old, &section))
        .unwrap_or_else(|err| panic!("write {}: {err}", config.out.display()));
    println!("wrote {}", config.out.display());
}

fn section(config: &Config, progress: &Progress) -> String {
    let mut lines: Vec<String> = vec![SOAK.begin.to_owned()];
    let mut line = |text: String| lines.push(text);
    line("## 6. Soak: pod create/delete cycles".into());
    line(String::new());
    line(
        "Written by `soak` (bench/src/bin/soak.rs; `bench-all` keeps this section). Each \
         cycle is a CRI pod in a network namespace of its own (CNI bridge: a tap and tc \
         mirroring in the pod), one busybox container that prints a line and exits, \
         StopPodSandbox and RemovePodSandbox; the hull pods run under QEMU TCG on this host. \
         The leak check (`hull_tests::leaks`) compares with a snapshot taken after one \
         warm-up cycle: processes, mounts, shim sockets, taps, cgroups, memfds, files under \
         the state directories, and containerd's descriptors by kind."
            .into(),
    );
    line(String::new());
    let status = match &progress.finished {
        Some(status) => status.clone(),
        None => format!(
            "in progress (partial result, rewritten every {} cycles)",
            config.check_every
        ),
    };
    line(format!("- status: {status}"));
    line(format!("- started: {}", progress.started_at));
    line(format!("- command: `{}`", config.command));
    line(format!(
        "- load average (1, 5, 15 min) when the run started: {}",
        progress.load
    ));
    line(format!(
        "- cycles: {} of {} run, {} failed",
        progress.done,
        config.cycles,
        progress.failures.len()
    ));
    let mut sorted = progress.times.clone();
    sorted.sort();
    if let Some(last) = progress.checkpoints.last() {
        line(format!(
            "- cycle time (s): median {:.2}, p95 {:.2}, max {:.2}; {:.0} s for {} cycles",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.95),
            sorted.last().map_or(0.0, Duration::as_secs_f64),
            last.elapsed.as_secs_f64(),
            last.after_cycle
        ));
    }
    line(format!("- baseline: {}", counts_line(&progress.baseline)));
    line(String::new());
    let mut header = "| after cycle | elapsed (s) |".to_owned();
    let mut rule = "| ---: | ---: |".to_owned();
    for kind in Kind::ALL {
        header.push_str(&format!(" {} |", kind.name()));
        rule.push_str(" ---: |");
    }
    header.push_str(" containerd RSS (KiB) | containerd open fds |");
    rule.push_str(" ---: | ---: |");
    line("Leaked items (new since the baseline) at each check:".into());
    line(String::new());
    line(header);
    line(rule);
    for checkpoint in &progress.checkpoints {
        let mut row = format!(
            "| {} | {:.0} |",
            checkpoint.after_cycle,
            checkpoint.elapsed.as_secs_f64()
        );
        for count in checkpoint.leaks.counts().values() {
            row.push_str(&format!(" {count} |"));
        }
        row.push_str(&format!(
            " {} | {} |",
            checkpoint.containerd_rss_kib, checkpoint.containerd_fds
        ));
        line(row);
    }
    if let Some(last) = progress.checkpoints.last()
        && !last.leaks.is_empty()
    {
        line(String::new());
        line("Leaked at the last check:".into());
        line(String::new());
        for (kind, item) in last.leaks.items.iter().take(40) {
            line(format!("- {}: `{item}`", kind.name()));
        }
    }
    if !progress.failures.is_empty() {
        line(String::new());
        line("Failed cycles (the first 20):".into());
        line(String::new());
        for failure in progress.failures.iter().take(20) {
            let short: String = failure.chars().take(300).collect();
            line(format!("- {}", short.replace('\n', " ")));
        }
    }
    lines.push(SOAK.end.to_owned());
    lines.join("\n")
}
