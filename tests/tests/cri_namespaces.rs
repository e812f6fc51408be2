//! CRI's namespace modes (issue 17, acceptance 3). Runs under QEMU TCG
//! here.

use std::time::{Duration, Instant};

use hull_tests::cri;
use hull_tests::cri::ContainerSpec;
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::{serial, unique_id};

const NS: &str = "hull-namespaces";
/// How long StopContainer and StopPodSandbox may take.
const ANSWER: Duration = Duration::from_secs(30);
const STARTED: Duration = Duration::from_secs(60);

/// A container whose init leaves a child that holds its stdout: killing the
/// init must end the container in every PID namespace mode, as with runc
/// (in the pod's namespace, CRI's usual one, the child outlived the init and
/// StopContainer waited for an exit that never came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the other tests of this file out.
#[allow(clippy::await_holding_lock)]
async fn a_stop_ends_the_container_when_a_child_holds_stdout_in_every_pid_mode() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    // (pod_pid, host_pid): container, pod, node.
    for (mode, pod_pid, host_pid) in [
        ("container", false, false),
        ("pod", true, false),
        ("node", false, true),
    ] {
        let mut spec = rt.pod_spec(&unique_id(mode));
        spec.pod_pid = pod_pid;
        spec.host_pid = host_pid;
        let (mut client, pod) = rt.run_cri_pod(&spec).await;
        let holder = ContainerSpec::new(
            "holder",
            BUSYBOX_IMAGE,
            &["sh", "-c", "sleep 1000 & echo started; wait"],
        );
        let id = client
            .run_container(&pod, &holder)
            .await
            .unwrap_or_else(|err| panic!("{mode}: the container: {err}"));
        let log = cri::wait_for_log(
            &pod.log_file(&holder.log_path()),
            "stdout",
            "started",
            STARTED,
        )
        .await;
        assert!(log.contains("started"), "{mode}: {log:?}");

        // The child runs, with the init's stdout open (in the pod's PID
        // namespace, the sandbox's own sleep shows too).
        let child = client
            .exec_sync(
                &id,
                &[
                    "sh",
                    "-c",
                    "for p in $(pidof sleep); do ls -l /proc/$p/fd/1; done",
                ],
                STARTED,
            )
            .await
            .unwrap_or_else(|err| panic!("{mode}: ExecSync: {err}"));
        assert!(child.stdout.contains("pipe:"), "{mode}: {child:?}");

        let started = Instant::now();
        let stopped =
            tokio::time::timeout(ANSWER, client.stop_container(&id, Duration::ZERO)).await;
        assert!(
            matches!(stopped, Ok(Ok(()))),
            "{mode}: StopContainer: {stopped:?} after {:?}\ncontainerd log:\n{}",
            started.elapsed(),
            rt.containerd.log_tail(80)
        );
        let status = client.container_status(&id).await.expect("ContainerStatus");
        assert_eq!(
            (status.state, status.exit_code),
            (k8s_cri::v1::ContainerState::ContainerExited as i32, 137),
            "{mode}: {status:?}"
        );
        let started = Instant::now();
        let stopped = tokio::time::timeout(ANSWER, client.stop_pod(&pod.id)).await;
        assert!(
            matches!(stopped, Ok(Ok(()))),
            "{mode}: StopPodSandbox: {stopped:?} after {:?}",
            started.elapsed()
        );
        client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
    }
}
