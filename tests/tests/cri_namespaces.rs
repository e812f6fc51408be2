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
    // (pod_pid, host_pid, target): container, pod, node, and another
    // container's (target).
    for (mode, pod_pid, host_pid, target) in [
        ("container", false, false, false),
        ("pod", true, false, false),
        ("node", false, true, false),
        ("target", false, false, true),
    ] {
        let mut spec = rt.pod_spec(&unique_id(mode));
        spec.pod_pid = pod_pid;
        spec.host_pid = host_pid;
        let (mut client, pod) = rt.run_cri_pod(&spec).await;
        let mut holder = ContainerSpec::new(
            "holder",
            BUSYBOX_IMAGE,
            &["sh", "-c", "sleep 1000 & echo started; wait"],
        );
        if target {
            let first = ContainerSpec::new("target", BUSYBOX_IMAGE, &["sleep", "1000"]);
            let first_id = client
                .run_container(&pod, &first)
                .await
                .unwrap_or_else(|err| panic!("{mode}: the target container: {err}"));
            holder.pid_target = Some(first_id);
        }
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

        // The child runs, with the init's stdout open (in a shared PID
        // namespace, the other containers' sleeps show too).
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

/// Two containers of a pod share its IPC and UTS namespaces, as with runc:
/// a SysV shared memory segment one makes shows in the other, and so does a
/// hostname one sets (which a namespace of its own would have copied from
/// the guest, not shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn the_containers_of_a_pod_share_its_ipc_and_uts_namespaces() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let probe_dir = tempfile::tempdir().expect("probe dir");
    hull_tests::probe::build(probe_dir.path());
    let (mut client, pod) = rt.run_cri_pod(&rt.pod_spec("shared")).await;
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let mut spec = ContainerSpec::new(name, BUSYBOX_IMAGE, &["sleep", "1000"]);
        spec.mounts = vec![cri::BindMount {
            host_path: probe_dir.path().to_owned(),
            container_path: "/probe".into(),
            readonly: true,
            ..Default::default()
        }];
        spec.add_capabilities = vec!["SYS_ADMIN".into()];
        ids.push(
            client
                .run_container(&pod, &spec)
                .await
                .unwrap_or_else(|err| panic!("{name}: {err}")),
        );
    }
    let exec = |id: String, script: &'static str| {
        let mut client = client.clone();
        async move {
            let output = client
                .exec_sync(&id, &["sh", "-c", script], STARTED)
                .await
                .unwrap_or_else(|err| panic!("ExecSync {script:?}: {err}"));
            assert_eq!(output.exit_code, 0, "{script}: {output:?}");
            output.stdout
        }
    };
    let made = exec(
        ids[0].clone(),
        "/probe/probe shm 48879 && hostname hull-shared-name",
    )
    .await;
    assert!(made.contains("shm 48879: created"), "{made}");
    // /proc/sysvipc/shm: the key is the first column.
    let seen = exec(ids[1].clone(), "cat /proc/sysvipc/shm; hostname").await;
    assert!(
        seen.lines()
            .any(|line| line.split_whitespace().next() == Some("48879")),
        "the second container does not see the first's segment:\n{seen}"
    );
    assert_eq!(
        seen.lines().last(),
        Some("hull-shared-name"),
        "the second container's hostname:\n{seen}"
    );
    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
}

/// A VM cannot share the node's network or IPC namespace: such a pod is
/// refused at RunPodSandbox, naming what it asked for, and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn host_network_and_host_ipc_pods_are_refused_naming_what_they_ask_for() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let mut client = cri::CriClient::connect(rt.containerd.cri_socket()).await;
    client.wait_for_test_images().await;
    for (what, host_network, host_ipc) in [("hostNetwork", true, false), ("hostIPC", false, true)] {
        let mut spec = rt.pod_spec(&unique_id("host"));
        spec.host_network = host_network;
        spec.host_ipc = host_ipc;
        let err = client
            .run_pod(&spec)
            .await
            .expect_err(&format!("a {what} pod"));
        assert!(
            err.message().contains("linux.namespaces: ") && err.message().contains(what),
            "{what}: {err:?}"
        );
    }
    let left = rt.leftovers(Duration::from_secs(20));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}
