//! The soak of issue 9: fifty CRI pod create/delete cycles (a network
//! namespace and tap each, one container) through a real containerd, with
//! hull pods under QEMU TCG on this host, leave nothing behind that the leak
//! check (`hull_tests::leaks`) counts: processes, mounts, shim sockets,
//! taps, cgroups, memfds, files under the state directories and containerd's
//! descriptors. `sudo bash bench/run.sh --soak 1000` runs the same cycle
//! 1,000 times.

use std::time::{Duration, Instant};

use hull_tests::leaks::Kind;
use hull_tests::soak::Soak;

const NS: &str = "hull-soak";
const CYCLES: usize = 50;
/// A leak check between the cycles, so a leak is caught near its cycle.
const CHECK_EVERY: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pod_cycles_leak_nothing() {
    let mut soak = Soak::start(NS).await;
    // Every cycle must succeed: the boot hang that once failed a few in a
    // hundred (vhost-device-vsock losing its worker thread to an early
    // CONNECT, see bench/README.md) is gone with the agent's ready call.
    if let Err(err) = soak.cycle(0).await {
        panic!(
            "the warm-up failed: {err}\ncontainerd log:\n{}",
            soak.rt.containerd.log_tail(80)
        );
    }
    let baseline = soak.baseline();

    // The check sees a live pod: were the cycles' cleanup missing, each of
    // these would be counted. (Hull makes no host cgroup and containerd's
    // descriptors churn, so those two kinds have nothing to show here.)
    let probe = soak.start_probe().await;
    let seen = soak.snapshot().leaks_since(&baseline).counts();
    for kind in [
        Kind::Processes,
        Kind::Mounts,
        Kind::ShimSockets,
        Kind::Taps,
        Kind::Memfds,
        Kind::StateFiles,
    ] {
        assert!(seen[&kind] > 0, "a running pod shows no {}", kind.name());
    }
    soak.stop_probe(&probe).await;
    let leaks = soak.leaks_since(&baseline);
    assert!(leaks.is_empty(), "the probe pod left:\n{leaks}");

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for cycle in 1..=CYCLES {
        match soak.cycle(cycle).await {
            Ok(took) => slowest = slowest.max(took),
            Err(err) => panic!(
                "cycle {cycle} failed: {err}\ncontainerd log:\n{}",
                soak.rt.containerd.log_tail(80)
            ),
        }
        if cycle % CHECK_EVERY == 0 {
            let leaks = soak.leaks_since(&baseline);
            assert!(leaks.is_empty(), "after {cycle} cycles:\n{leaks}");
            eprintln!(
                "soak: {cycle} cycles in {:.1} s (slowest {:.1} s), no leaks",
                started.elapsed().as_secs_f64(),
                slowest.as_secs_f64()
            );
        }
    }
    let counts = soak.snapshot().counts();
    eprintln!(
        "soak: {CYCLES} cycles in {:.1} s; final counts {counts:?}",
        started.elapsed().as_secs_f64()
    );
}
