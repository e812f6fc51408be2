//! Pod network throughput: a hull pod against a runc pod on the same CNI
//! bridge, in one run of a private containerd (Debian's 1.6, the bridge and
//! host-local plugins). Each pod serves a file from its tmpfs /dev/shm with
//! busybox httpd; a peer namespace on the bridge fetches it with busybox
//! nc, timed on the host, alternately for the two pods. Prints the median
//! throughputs and their ratio; asserts nothing.
//!
//!   sudo bash scripts/test.sh     # builds everything, the guest image too
//!   cargo build --release -p hull-shim -p hull-bench
//!   sudo target/release/net-throughput [--runs N] [--mib M]
//!
//! On this project's machines the hull pod runs under QEMU TCG: the ratio
//! says what the emulation, the tap and tc mirroring cost together.

use std::time::{Duration, Instant};

use hull_bench::args::number;
use hull_bench::{median, ratio};
use hull_tests::containerd::{HULL_HANDLER, RUNC_HANDLER};
use hull_tests::cri::{ContainerSpec, CriClient, PodSpec};
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::peer::Peer;

const PORT: u16 = 8080;
/// How long the servers get to come up. One transfer is bounded by busybox
/// nc's 30 s idle timeout.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = number(&args, "--runs", 3u32, 20);
    // /dev/shm holds 64 MiB in both runtimes.
    let mib = number(&args, "--mib", 32u32, 48);

    let rt = HullRuntime::start("hull-bench", true);
    let mut client = CriClient::connect(rt.containerd.cri_socket()).await;
    client.wait_for_test_images().await;
    let logs = rt.state_dir.with_file_name("logs");
    let serve = format!(
        "dd if=/dev/zero of=/dev/shm/big bs=1M count={mib} 2>/dev/null && echo ok > /dev/shm/ready && exec httpd -f -p {PORT} -h /dev/shm"
    );

    let mut pods = Vec::new();
    for (name, handler) in [("runc", RUNC_HANDLER), ("hull", HULL_HANDLER)] {
        let mut spec = PodSpec::new(&format!("tp-{name}"), handler, &logs);
        spec.host_network = false;
        let pod = client
            .run_pod(&spec)
            .await
            .unwrap_or_else(|err| panic!("RunPodSandbox {name}: {err}"));
        let server = ContainerSpec::new("server", BUSYBOX_IMAGE, &["sh", "-c", &serve]);
        client
            .run_container(&pod, &server)
            .await
            .unwrap_or_else(|err| panic!("{name} server: {err}"));
        let ip = client.pod_ip(&pod.id).await.expect("pod status");
        pods.push((name, pod, ip));
    }
    let bridge = rt.containerd.cni_bridge().expect("CNI bridge").to_owned();
    let peer = Peer::on_bridge(&bridge, "10.254.0.250/24");
    let bytes = f64::from(mib) * 1024.0 * 1024.0;

    let mut results: Vec<Vec<f64>> = vec![Vec::new(); pods.len()];
    for run in 0..runs {
        for (index, (name, _, ip)) in pods.iter().enumerate() {
            // The first fetch also waits for the server to be up.
            if run == 0 {
                peer.fetch(ip, PORT, "/ready", FETCH_TIMEOUT);
            }
            let started = Instant::now();
            let fetched = peer.http_get(ip, PORT, "/big");
            let seconds = started.elapsed().as_secs_f64();
            match fetched {
                Ok(body) if body.len() as f64 == bytes => {
                    let mib_per_s = bytes / seconds / (1024.0 * 1024.0);
                    println!(
                        "RESULT {name} run {run}: {mib} MiB in {seconds:.2} s, {mib_per_s:.1} MiB/s"
                    );
                    results[index].push(mib_per_s);
                }
                Ok(body) => println!("FAILED {name} run {run}: {} bytes of {bytes}", body.len()),
                Err(err) => println!("FAILED {name} run {run}: {err}"),
            }
        }
    }
    // The hull pod's bytes went through its VM: count them on its tap.
    for dir in rt.pod_dirs() {
        if let Ok(netns) = std::fs::read_to_string(dir.join("netns")) {
            let output = std::process::Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .args(["cat", "/proc/net/dev"])
                .output()
                .expect("nsenter");
            let text = String::from_utf8_lossy(&output.stdout);
            if let Some(line) = text
                .lines()
                .find(|l| l.trim_start().starts_with("tap0_hull:"))
            {
                // Receive bytes are the first field: what the guest sent.
                let sent: u64 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                println!(
                    "the hull pod's VM sent {} MiB through tap0_hull",
                    sent / (1024 * 1024)
                );
            }
        }
    }
    let runc = median(results[0].clone());
    let hull = median(results[1].clone());
    println!();
    println!(
        "| pod to peer over the CNI bridge, {mib} MiB, median of {runs} | hull | runc | hull/runc |"
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| throughput (MiB/s) | {hull:.1} | {runc:.1} | {} |",
        ratio(hull, runc)
    );

    for (_, pod, _) in &pods {
        let _ = client.stop_pod(&pod.id).await;
        let _ = client.remove_pod(&pod.id).await;
    }
}
