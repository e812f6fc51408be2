//! Section 1, pod start, and the one pod start that the density run
//! (section 4) repeats concurrently.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hull_bench::{median, percentile, ratio};
use hull_tests::cri::{ContainerSpec, CriClient, Pod, PodSpec};
use hull_tests::image::BUSYBOX_IMAGE;

use crate::report::Report;
use crate::{Config, RUNTIMES};

/// Bounds the wait for a container's first stdout byte (each CRI call is
/// bounded by `hull_tests::cri::CALL_TIMEOUT`).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(180);

/// The timings of one pod start, in ms from before RunPodSandbox.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    sandbox: f64,
    created: f64,
    started: f64,
    first_byte: f64,
}

/// Which of a [`Start`]'s timings.
type Pick = fn(&Start) -> f64;

/// RunPodSandbox, CreateContainer (`echo`), StartContainer, then polls the
/// CRI log until its first stdout byte.
pub(crate) async fn start_pod(
    client: &mut CriClient,
    name: &str,
    handler: &str,
    logs: &Path,
) -> Result<(Pod, Start), String> {
    // In a network namespace of its own, as Kubernetes' pods are (the hull
    // runtime refuses the node's): each runtime's time includes CNI.
    let mut spec = PodSpec::new(name, handler, logs);
    spec.host_network = false;
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

pub(crate) async fn remove(client: &mut CriClient, pod: &Pod) {
    let _ = client.stop_pod(&pod.id).await;
    let _ = client.remove_pod(&pod.id).await;
}

pub(crate) async fn pod_start(
    report: &mut Report,
    config: &Config,
    client: &mut CriClient,
    logs: &Path,
) {
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
