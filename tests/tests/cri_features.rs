//! CRI calls that must behave as they do with runc (issue 17, acceptance
//! 4): ExecSync's timeout, UpdateContainerResources, ReopenContainerLog,
//! a container restarted within its pod, and Attach. Runs under QEMU TCG
//! here.

use std::time::{Duration, Instant};

use hull_tests::cri::{self, ContainerSpec};
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::streaming::{self, ChannelStream};
use hull_tests::{serial, unique_id};

const NS: &str = "hull-features";
const EXEC: Duration = Duration::from_secs(60);

/// ExecSync with a timeout ends at it, as containerd ends it for runc: the
/// call fails saying so, the exec'd process is killed, and the container
/// keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn exec_sync_ends_at_its_timeout_and_update_and_reopen_work() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let (mut client, pod) = rt.run_cri_pod(&rt.pod_spec(&unique_id("features"))).await;
    let ticker = ContainerSpec::new(
        "ticker",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
        ],
    );
    let id = client
        .run_container(&pod, &ticker)
        .await
        .expect("the container");

    // ExecSync's timeout.
    let started = Instant::now();
    let timed_out = client
        .exec_sync(&id, &["sh", "-c", "exec sleep 61"], Duration::from_secs(2))
        .await;
    let took = started.elapsed();
    let err = timed_out.expect_err("an exec past its timeout");
    assert!(
        err.message().contains("timeout"),
        "ExecSync past its timeout: {err:?}"
    );
    assert!(took < Duration::from_secs(20), "ExecSync took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = client
            .sh(&id, "ps -o args | grep -c '^sleep 61' || true")
            .await;
        if left.trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out exec still runs: {left}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = client.container_status(&id).await.expect("ContainerStatus");
    assert_eq!(
        status.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32,
        "{status:?}"
    );

    // UpdateContainerResources reaches the container's cgroup in the guest,
    // which the container sees as its own /sys/fs/cgroup (the guest's
    // cgroups are v2, with a cgroup namespace per container, as containerd
    // sets up on a v2 host).
    const LIMIT: i64 = 96 * 1024 * 1024;
    client
        .update_memory_limit(&id, LIMIT)
        .await
        .expect("UpdateContainerResources");
    let limit = client.sh(&id, "cat /sys/fs/cgroup/memory.max").await;
    assert_eq!(
        limit.trim(),
        LIMIT.to_string(),
        "the container's memory limit"
    );

    // ReopenContainerLog: after the kubelet's rotation moves the log away,
    // the container's output goes to a new file at the log path.
    let log = pod.log_file(&ticker.log_path());
    cri::wait_for_log(&log, "stdout", "tick 1", EXEC).await;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rotating the log");
    client
        .reopen_container_log(&id)
        .await
        .expect("ReopenContainerLog");
    let fresh = cri::wait_for_log(&log, "stdout", "tick", EXEC).await;
    assert!(fresh.contains("tick"), "the reopened log: {fresh:?}");
    let old = cri::log_text(&rotated, "stdout");
    assert!(old.contains("tick 1"), "the rotated log: {old:?}");

    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
}

/// A container that exits is created and started again in the same pod,
/// with the next attempt, as the kubelet restarts one: the new one runs and
/// sees what the first left in a pod volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn a_container_restarts_within_its_pod() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let (mut client, pod) = rt.run_cri_pod(&rt.pod_spec(&unique_id("restart"))).await;
    let volume = tempfile::tempdir().expect("volume");
    let mut first = ContainerSpec::new(
        "worker",
        BUSYBOX_IMAGE,
        &["sh", "-c", "echo run >> /data/runs; cat /data/runs | wc -l"],
    );
    first.mounts = vec![cri::BindMount {
        host_path: volume.path().to_owned(),
        container_path: "/data".into(),
        readonly: false,
        ..Default::default()
    }];
    let first_id = client.run_container(&pod, &first).await.expect("attempt 0");
    assert_eq!(client.wait_exited(&first_id, EXEC).await.expect("exits"), 0);
    let restarted = ContainerSpec {
        attempt: 1,
        log_path: "worker-1.log".into(),
        ..first.clone()
    };
    let second_id = client
        .run_container(&pod, &restarted)
        .await
        .expect("attempt 1");
    assert_ne!(first_id, second_id);
    assert_eq!(
        client.wait_exited(&second_id, EXEC).await.expect("exits"),
        0
    );
    let log = cri::wait_for_log(&pod.log_file(&restarted.log_path()), "stdout", "2", EXEC).await;
    assert_eq!(log.trim(), "2", "the restarted container's count of runs");
    client
        .remove_container(&first_id)
        .await
        .expect("removing the first attempt");
    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
}

/// Attach (`kubectl attach -i`, `kubectl run -i`): what the client sends
/// reaches the container's stdin, and its stdout reaches the client and
/// the log, as with runc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn attach_reaches_the_containers_stdin_and_stdout() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let (mut client, pod) = rt.run_cri_pod(&rt.pod_spec(&unique_id("attach"))).await;
    let spec = ContainerSpec {
        stdin: true,
        ..ContainerSpec::new(
            "echoer",
            BUSYBOX_IMAGE,
            &[
                "sh",
                "-c",
                "echo ready; while read line; do echo got:$line; done",
            ],
        )
    };
    let id = client
        .run_container(&pod, &spec)
        .await
        .expect("the container");
    cri::wait_for_log(&pod.log_file(&spec.log_path()), "stdout", "ready", EXEC).await;
    let url = client.attach(&id).await.expect("Attach");
    let mut stream = ChannelStream::connect(&url).await;
    stream.send_stdin(b"hello hull\n").await;
    stream
        .read_until(streaming::STDOUT, "got:hello hull", EXEC)
        .await;
    stream.close().await;
    cri::wait_for_log(
        &pod.log_file(&spec.log_path()),
        "stdout",
        "got:hello hull",
        EXEC,
    )
    .await;
    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
}
