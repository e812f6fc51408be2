//! Sections 4 and 3: density, then the memory of the pods that the density
//! run leaves standing (measuring them there saves starting them twice).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hull_bench::ratio;
use hull_tests::cri::CriClient;
use hull_tests::hull_runtime::HullRuntime;

use crate::memory::memory_of_shims;
use crate::pod_start::{remove, start_pod};
use crate::report::Report;
use crate::{Config, RUNTIMES};

const CONCURRENCY: usize = 4;

/// Per-pod memory of one runtime: (own, with guest RAM, processes).
type Memory = (f64, f64, String);

pub(crate) async fn density_and_memory(
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
