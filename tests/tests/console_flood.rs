//! A console flood (issue 16, acceptance 4) through a real containerd, under
//! QEMU TCG: a privileged container writes to the guest's serial port, the
//! console the shim copies, for a minute: first in lines, then without a
//! single newline. Throughout, the shim's memory stays under a stated bound
//! and the pod's `console.log` (with its one rotated file) under its cap;
//! when the VM then dies mid-flood, the error that names it stays a few
//! KiB long however long the guest's last "line" was.
//!
//! The hull-vmm side of the same promise is `vmm/tests/tiny_guests.rs`
//! (`a_console_flood_leaves_the_console_log_and_memory_bounded`).

use std::path::Path;
use std::time::{Duration, Instant};

use hull_tests::faults::{kill_9, poll};
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::unique_id;

const NS: &str = "hull-flood";
/// Under TCG on a busy host a boot takes tens of seconds.
const BOOT: Duration = Duration::from_secs(180);
/// How long each half of the flood lasts.
const HALF: Duration = Duration::from_secs(30);
/// The console log's cap (`hull_hypervisor::console::Limits::log_file`),
/// kept twice over with the rotated file, plus one line.
const LOG_CAP: u64 = 512 * 1024 + 4096 + 16;
/// The shim's resident memory must stay under this; it is about 15 MiB at
/// rest.
const SHIM_RSS: u64 = 40 * 1024 * 1024;
/// And may grow by at most this over the flood.
const SHIM_GROWTH: u64 = 6 * 1024 * 1024;
/// The longest error line the shim may log about the VM.
const ERROR_LEN: usize = 6 * 1024;

/// In lines for HALF, then with no newline at all until the VM dies. The
/// serial port's node is made in the container's own /dev, which a
/// privileged container may do.
const FLOOD: &str = "mknod /dev/flood c 4 64 && \
    timeout 30 yes 0123456789abcdef0123456789abcdef > /dev/flood; \
    echo; yes x | tr -d '\\n' > /dev/flood";

fn resident(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

#[test]
fn a_console_flood_leaves_the_shim_and_the_console_log_bounded() {
    let rt = HullRuntime::start(NS, false);
    let id = unique_id("flood");
    rt.run_ok(&["--privileged", "-d", BUSYBOX_IMAGE, &id, "sh", "-c", FLOOD]);
    let started = Instant::now();
    let shim = poll("the shim", BOOT, || {
        rt.containerd.shim_pids().first().copied()
    });
    let pod_dir = poll("the pod directory", BOOT, || rt.pod_dirs().first().cloned());
    let console_log = pod_dir.join("console.log");
    let rotated = pod_dir.join("console.log.1");
    let qemu = poll("the VMM", BOOT, || {
        HullRuntime::vm_processes(&pod_dir)
            .into_iter()
            .find(|(name, _)| name == "qemu")
            .map(|(_, pid)| pid)
    });
    // The flood is on once the console has the container's lines.
    poll("the flood", BOOT, || {
        let log = std::fs::read_to_string(&console_log).unwrap_or_default();
        (log.contains("0123456789abcdef0123456789abcdef") || len(&rotated) > 0).then_some(())
    });
    let at_start = resident(shim).expect("the shim's memory");
    let (mut most_resident, mut largest_logs, mut flooded) = (at_start, 0, 0u64);
    let mut last = (0, 0);
    let sampling = Instant::now();
    while sampling.elapsed() < 2 * HALF {
        std::thread::sleep(Duration::from_millis(500));
        let now = (len(&console_log), len(&rotated));
        // What reached the log since the last look, rotations included.
        flooded += if now.0 >= last.0 {
            now.0 - last.0
        } else {
            now.0 + now.1.saturating_sub(last.0)
        };
        last = now;
        largest_logs = largest_logs.max(now.0.max(now.1));
        most_resident = most_resident.max(resident(shim).expect("the shim is alive"));
    }
    // Then the VM dies while the guest's current "line" has gone on for
    // HALF: the error that says so carries only a bounded piece of it.
    kill_9(qemu);
    rt.wait_stopped(&id, BOOT);
    let log = rt.containerd.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("the pod's VM is gone"))
        .collect();
    let report = format!(
        "flooded {flooded} bytes in {:?}; logs up to {largest_logs} bytes; shim {} -> {} KiB",
        started.elapsed(),
        at_start / 1024,
        most_resident / 1024
    );
    eprintln!("{report}");
    assert!(
        !errors.is_empty(),
        "no error names the VM's death:\n{}",
        rt.containerd.log_tail(40)
    );
    for error in &errors {
        assert!(
            error.len() <= ERROR_LEN,
            "a {}-byte error: {}…",
            error.len(),
            &error[..error.floor_char_boundary(400)]
        );
    }
    assert!(
        flooded > 2 * LOG_CAP,
        "the guest wrote too little to test the cap: {report}"
    );
    assert!(largest_logs <= LOG_CAP, "{report}");
    assert!(most_resident <= SHIM_RSS, "{report}");
    assert!(most_resident - at_start <= SHIM_GROWTH, "{report}");
    rt.containerd.ctr_ok(&["-n", NS, "tasks", "rm", &id]);
    rt.containerd.ctr_ok(&["-n", NS, "containers", "rm", &id]);
    let left = rt.leftovers(Duration::from_secs(30));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}
