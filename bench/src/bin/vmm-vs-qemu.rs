//! `hull-vmm` against QEMU microvm (`-accel kvm`), in one KVM test host run,
//! with the same kernel, initrd and 256 MiB: time from VMM start to the
//! agent's first line, and the VMM's own RSS (guest RAM excluded, from
//! /proc/PID/smaps). Prints the figures and their ratios; asserts nothing.
//!
//!   cargo run --release -p hull-bench --bin vmm-vs-qemu [-- --runs N]

use std::time::Duration;

use hull_bench::ratio;
use hull_tests::kvm_host;

/// Runs inside the test host. `measure NAME CONSOLE CMD...` starts a VMM,
/// waits for the agent's first line on its console, then reads its RSS
/// split into guest RAM (the memfd mapping) and everything else.
const MEASURE: &str = r#"
measure() {
  name=$1; console=$2; shift 2
  rm -f "$console"
  start=$(date +%s%N)
  "$@" > /tmp/$name.out 2>&1 &
  pid=$!
  for i in $(seq 1 2400); do
    grep -q 'serving on vsock' "$console" 2>/dev/null && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
  done
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  grep -q 'serving on vsock' "$console" || { echo "$name did not boot"; tail -n 20 "$console"; exit 1; }
  sleep 1
  rss=$(awk '/^[0-9a-f]+-[0-9a-f]+ /{map=$6} /^Rss:/{ if (map ~ /memfd/) guest+=$2; else own+=$2 } END {print own, guest}' /proc/$pid/smaps)
  echo "RESULT $name $ms ${rss% *} ${rss#* }"
  kill $pid; wait $pid 2>/dev/null
}
"#;

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|arg| arg != "--runs")
        .nth(1)
        .map(|n| n.parse().expect("--runs takes a number"))
        .unwrap_or(3);
    let (kernel, initrd) = hull_tests::vm::guest_image();
    let vmm = hull_tests::workspace_binary("hull-vmm");
    let (kernel, initrd, vmm) = (kernel.display(), initrd.display(), vmm.display());
    let mut script = String::from(MEASURE);
    for _ in 0..runs {
        script.push_str(&format!(
            "measure hull-vmm /tmp/hull.console {vmm} --kernel {kernel} --initrd {initrd} \
             --memory-mib 256 --console-log /tmp/hull.console\n\
             measure qemu /tmp/qemu.out qemu-system-x86_64 -accel kvm -cpu host \
             -machine microvm,pit=on,memory-backend=mem \
             -object memory-backend-memfd,id=mem,size=256M,share=on -m 256M \
             -nodefaults -no-user-config -display none -serial stdio -no-reboot \
             -append 'console=ttyS0 reboot=t panic=-1' -kernel {kernel} -initrd {initrd}\n"
        ));
    }
    let outcome = kvm_host::run(&script, 3072, Duration::from_secs(1800));
    if outcome.exit_code != 0 {
        eprintln!("the benchmark failed:\n{}", outcome.output);
        std::process::exit(1);
    }
    let mut samples: Vec<(String, f64, f64, f64)> = Vec::new();
    for line in outcome.output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let ["RESULT", name, ms, own, guest] = fields[..] {
            let number = |text: &str| text.parse::<f64>().unwrap_or(0.0);
            samples.push((name.to_owned(), number(ms), number(own), number(guest)));
        }
    }
    let median = |name: &str, pick: fn(&(String, f64, f64, f64)) -> f64| {
        let mut values: Vec<f64> = samples.iter().filter(|s| s.0 == name).map(pick).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "hull-vmm vs QEMU microvm -accel kvm, inside the KVM test host, {runs} runs each (medians)"
    );
    println!(
        "{:<38} {:>10} {:>10} {:>8}",
        "", "hull-vmm", "qemu", "ratio"
    );
    for (label, pick) in [
        (
            "VMM start to agent line (ms)",
            (|s: &(String, f64, f64, f64)| s.1) as fn(&_) -> f64,
        ),
        ("VMM own RSS, guest RAM excluded (KiB)", |s| s.2),
        ("guest RAM touched (KiB)", |s| s.3),
    ] {
        let (hull, qemu) = (median("hull-vmm", pick), median("qemu", pick));
        println!(
            "{label:<38} {hull:>10.0} {qemu:>10.0} {:>8}",
            ratio(hull, qemu)
        );
    }
}
