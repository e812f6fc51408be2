//! `bench-all --quick`: the runner goes through every section on a tiny
//! configuration (one or two runs and pods, small sizes) and writes its
//! results file, every ratio filled in. No figure is checked against a
//! threshold: that the runner works is all this says.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_runner_completes_a_quick_run_and_writes_every_ratio() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("RESULTS.md");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_bench-all"))
        .args(["--quick", "--out"])
        .arg(&out)
        .output()
        .expect("run bench-all");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench-all --quick failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results = std::fs::read_to_string(&out).expect("the results file");
    for header in [
        "## 1. Pod start",
        "## 2. Boot timeline in the KVM test host",
        "## 3. Host memory per idle pod",
        "## 4. Density",
        "## 5. I/O",
        "- command: `",
        "- machine: ",
    ] {
        assert!(results.contains(header), "no {header:?} in:\n{results}");
    }
    assert!(!results.contains("FAILED"), "a step failed:\n{results}");
    // Every table row ends in a ratio; a "-" would mean a missing figure.
    let rows: Vec<&str> = results
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| ---"))
        .filter(|line| !line.contains("hull/runc |") && !line.contains("hull-vmm/qemu |"))
        .filter(|line| !line.starts_with("| pods started, in seconds"))
        .collect();
    assert!(rows.len() >= 15, "too few rows:\n{results}");
    for row in rows {
        let ratio = row
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap_or("")
            .trim();
        // QEMU has no kernel entry mark: that one ratio cannot exist.
        if row.contains("kernel entry") {
            continue;
        }
        assert!(ratio.parse::<f64>().is_ok(), "no ratio in {row:?}");
    }
    // The bound the issue sets for this check.
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "took {:?}",
        started.elapsed()
    );
}
