//! Proves the containerd/CRI harness with runc, the runtime that works on
//! this host: `ctr run`, a two-container CRI pod, ExecSync, pod teardown,
//! and that nothing of the private containerd outlives it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_tests::containerd::{self, CRI_NAMESPACE, Containerd, RUNC_HANDLER};
use hull_tests::cri::{self, ContainerSpec, CriClient, PodSpec};
use hull_tests::image::BUSYBOX_IMAGE;

const CTR_NAMESPACE: &str = "hull-test";

/// What must be gone once a [`Containerd`] is dropped.
struct Footprint {
    dir: PathBuf,
    socket: PathBuf,
    pids: Vec<i32>,
    cgroups: Vec<PathBuf>,
}

impl Footprint {
    fn of(containerd: &Containerd) -> Self {
        Self {
            dir: containerd.dir().to_owned(),
            socket: containerd.socket().to_owned(),
            pids: vec![containerd.pid() as i32],
            cgroups: vec![],
        }
    }

    /// Remembers the shims and every task's process, to check they die.
    fn add_processes(&mut self, containerd: &Containerd) {
        self.pids.extend(containerd.shim_pids());
        for namespace in [CTR_NAMESPACE, CRI_NAMESPACE] {
            for (_, pid) in containerd.task_pids(namespace) {
                self.pids.push(pid);
                self.cgroups.extend(containerd::cgroup_dirs(pid));
            }
        }
        assert!(!self.cgroups.is_empty(), "tasks have cgroups");
    }

    fn assert_gone(&self) {
        // Killed processes may linger a moment as zombies before init reaps
        // them; a zombie runs nothing.
        let deadline = Instant::now() + Duration::from_secs(5);
        let alive = || -> Vec<(i32, char)> {
            self.pids
                .iter()
                .filter_map(|&pid| containerd::process_state(pid).map(|state| (pid, state)))
                .filter(|(_, state)| *state != 'Z')
                .collect()
        };
        while !alive().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(alive(), vec![], "processes outlived the harness");
        assert_eq!(
            containerd::shim_pids(&self.socket),
            Vec::<i32>::new(),
            "shims outlived the harness"
        );
        assert_eq!(
            containerd::mounts_under(&self.dir),
            Vec::<PathBuf>::new(),
            "mounts outlived the harness"
        );
        assert!(!self.dir.exists(), "{} still exists", self.dir.display());
        let cgroups: Vec<&PathBuf> = self.cgroups.iter().filter(|dir| dir.exists()).collect();
        assert_eq!(
            cgroups,
            Vec::<&PathBuf>::new(),
            "cgroups outlived the harness"
        );
    }
}

fn ctr_run(containerd: &Containerd, args: &[&str]) -> std::process::Output {
    let id = hull_tests::unique_id("c");
    let mut full = vec!["--rm", BUSYBOX_IMAGE, &id];
    full.extend_from_slice(args);
    containerd.ctr_run(CTR_NAMESPACE, &full)
}

#[test]
fn ctr_runs_busybox_with_runc() {
    let containerd = Containerd::start();
    let footprint = Footprint::of(&containerd);
    containerd.import_test_images(CTR_NAMESPACE);

    let output = ctr_run(&containerd, &["echo", "hello"]);
    assert!(
        output.status.success(),
        "ctr run failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        containerd.log_tail(40)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello\n");

    let output = ctr_run(&containerd, &["sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "oops\n");

    // --rm left no container, task or shim behind.
    assert_eq!(
        containerd.ctr_ok(&["-n", CTR_NAMESPACE, "containers", "ls", "-q"]),
        ""
    );
    assert_eq!(containerd.shim_pids(), Vec::<i32>::new());

    drop(containerd);
    footprint.assert_gone();
}

/// A port on the node network that parallel tests do not share.
fn test_port() -> u16 {
    20000 + (std::process::id() % 20000) as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_with_two_containers_on_runc() {
    let containerd = Containerd::start();
    let mut footprint = Footprint::of(&containerd);
    containerd.import_cri_images();
    let mut client = CriClient::connect(containerd.cri_socket()).await;
    assert_eq!(client.version().await.runtime_name, "containerd");
    client.wait_for_test_images().await;

    let logs = containerd.dir().join("pod-logs");
    let spec = PodSpec::new("two-containers", RUNC_HANDLER, &logs);
    let pod = client
        .run_pod(&spec)
        .await
        .unwrap_or_else(|err| panic!("RunPodSandbox: {err}\n{}", containerd.log_tail(60)));

    let port = test_port().to_string();
    let listener = ContainerSpec::new(
        "listener",
        BUSYBOX_IMAGE,
        &["sh", "-c", &format!("echo pong | nc -l -p {port}")],
    );
    let listener_id = client
        .run_container(&pod, &listener)
        .await
        .unwrap_or_else(|err| panic!("listener: {err}\n{}", containerd.log_tail(60)));
    // The listener may not be listening yet: retry until it answers.
    let mut dialer = ContainerSpec::new(
        "dialer",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "until echo ping | nc 127.0.0.1 \"$PORT\"; do sleep 0.1; done",
        ],
    );
    dialer.env.push(("PORT".into(), port.clone()));
    let dialer_id = client
        .run_container(&pod, &dialer)
        .await
        .unwrap_or_else(|err| panic!("dialer: {err}\n{}", containerd.log_tail(60)));

    for id in [&dialer_id, &listener_id] {
        let code = client
            .wait_exited(id, Duration::from_secs(30))
            .await
            .unwrap_or_else(|status| panic!("{id} did not exit: {status:?}"));
        assert_eq!(code, 0, "container {id}");
    }
    let dialer_log = pod.log_file(&dialer.log_path());
    let listener_log = pod.log_file(&listener.log_path());
    assert_eq!(cri::log_text(&dialer_log, "stdout"), "pong\n");
    assert_eq!(cri::log_text(&listener_log, "stdout"), "ping\n");
    let lines = cri::read_log(&dialer_log);
    assert!(
        lines.iter().all(|l| l.timestamp.ends_with('Z')),
        "{lines:?}"
    );

    // ExecSync in a running container: stdout, stderr and exit code.
    let sleeper = ContainerSpec::new("sleeper", BUSYBOX_IMAGE, &["sleep", "1000"]);
    let sleeper_id = client.run_container(&pod, &sleeper).await.expect("sleeper");
    let exec = client
        .exec_sync(
            &sleeper_id,
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            Duration::from_secs(10),
        )
        .await
        .expect("ExecSync");
    assert_eq!(
        (exec.stdout.as_str(), exec.stderr.as_str(), exec.exit_code),
        ("out\n", "err\n", 7)
    );
    footprint.add_processes(&containerd);
    assert!(
        !containerd.shim_pids().is_empty(),
        "a running pod has a shim"
    );

    client.stop_pod(&pod.id).await.expect("StopPodSandbox");
    let status = client.container_status(&sleeper_id).await.expect("status");
    assert_eq!(
        status.state,
        cri::v1::ContainerState::ContainerExited as i32
    );
    client.remove_pod(&pod.id).await.expect("RemovePodSandbox");
    assert!(client.list_pods().await.is_empty());
    assert!(client.list_containers().await.is_empty());
    wait_until(Duration::from_secs(10), || {
        containerd.shim_pids().is_empty()
    });
    assert_eq!(
        containerd.shim_pids(),
        Vec::<i32>::new(),
        "shim after RemovePodSandbox"
    );

    drop(client);
    drop(containerd);
    footprint.assert_gone();
}

/// A pod with its own network namespace from the bridge CNI config: what a
/// VM sandbox gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_network_namespace_with_bridge_cni() {
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let containerd = Containerd::builder().cni_bridge().start();
    let bridge = containerd.cni_bridge().expect("bridge").to_owned();
    let mut footprint = Footprint::of(&containerd);
    containerd.import_cri_images();
    let mut client = CriClient::connect(containerd.cri_socket()).await;
    client.wait_for_test_images().await;

    let mut spec = PodSpec::new("own-netns", RUNC_HANDLER, &containerd.dir().join("logs"));
    spec.host_network = false;
    let pod = client
        .run_pod(&spec)
        .await
        .unwrap_or_else(|err| panic!("RunPodSandbox: {err}\n{}", containerd.log_tail(60)));
    let sleeper = ContainerSpec::new("sleeper", BUSYBOX_IMAGE, &["sleep", "1000"]);
    let id = client.run_container(&pod, &sleeper).await.expect("sleeper");
    let exec = client
        .exec_sync(
            &id,
            &[
                "sh",
                "-c",
                "hostname; ls /sys/class/net; ip -4 -o addr show eth0",
            ],
            Duration::from_secs(10),
        )
        .await
        .expect("ExecSync");
    assert!(
        exec.stdout.starts_with("own-netns\neth0\nlo\n") && exec.stdout.contains("inet 10.254.0."),
        "{exec:?}"
    );
    footprint.add_processes(&containerd);
    assert!(
        containerd::mounts_under(containerd.dir())
            .iter()
            .any(|point| point.to_string_lossy().contains("netns")),
        "the pod's network namespace is mounted under the state directory"
    );

    client.stop_pod(&pod.id).await.expect("StopPodSandbox");
    client.remove_pod(&pod.id).await.expect("RemovePodSandbox");
    drop(client);
    drop(containerd);
    footprint.assert_gone();
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} outlived the harness"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        forwarding,
        "the CNI config changed IP forwarding on the host"
    );
}

/// A test that fails half-way leaves a running pod and container: dropping
/// the harness must still clean up everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_cleans_up_running_pods_and_tasks() {
    let containerd = Containerd::start();
    let mut footprint = Footprint::of(&containerd);
    containerd.import_cri_images();
    containerd.import_test_images(CTR_NAMESPACE);

    let id = hull_tests::unique_id("bg");
    let output = containerd.ctr_run(CTR_NAMESPACE, &["-d", BUSYBOX_IMAGE, &id, "sleep", "1000"]);
    assert!(output.status.success(), "{output:?}");

    let mut client = CriClient::connect(containerd.cri_socket()).await;
    client.wait_for_test_images().await;
    let spec = PodSpec::new("left-running", RUNC_HANDLER, &containerd.dir().join("logs"));
    let pod = client.run_pod(&spec).await.expect("RunPodSandbox");
    let sleeper = ContainerSpec::new("sleeper", BUSYBOX_IMAGE, &["sleep", "1000"]);
    client.run_container(&pod, &sleeper).await.expect("sleeper");

    footprint.add_processes(&containerd);
    assert!(
        containerd.shim_pids().len() >= 2,
        "expected a shim for the ctr task and one for the pod"
    );
    assert!(
        !containerd::mounts_under(containerd.dir()).is_empty(),
        "running containers have their rootfs mounted"
    );

    drop(client);
    drop(containerd);
    footprint.assert_gone();
}

/// A harness whose test process died (so no drop ran) is cleaned up by the
/// next start: simulated by handing its directory to a dead process and
/// forgetting it.
#[test]
fn stale_harness_is_cleaned_up_by_the_next_start() {
    let containerd = Containerd::start();
    let mut footprint = Footprint::of(&containerd);
    containerd.import_test_images(CTR_NAMESPACE);
    let id = hull_tests::unique_id("stale");
    let output = containerd.ctr_run(CTR_NAMESPACE, &["-d", BUSYBOX_IMAGE, &id, "sleep", "1000"]);
    assert!(output.status.success(), "{output:?}");
    footprint.add_processes(&containerd);

    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(containerd.dir().join("owner.pid"), dead_pid.to_string()).unwrap();
    std::mem::forget(containerd);

    containerd::clean_up_stale();
    footprint.assert_gone();
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pause_image_exits_promptly_on_sigterm() {
    let containerd = Containerd::start();
    let footprint = Footprint::of(&containerd);
    containerd.import_test_images(CTR_NAMESPACE);
    let id = hull_tests::unique_id("pause");
    let output = containerd.ctr_run(CTR_NAMESPACE, &["-d", hull_tests::image::PAUSE_IMAGE, &id]);
    assert!(output.status.success(), "{output:?}");
    // Give the shell time to install its trap.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    containerd.ctr_ok(&["-n", CTR_NAMESPACE, "tasks", "kill", "-s", "SIGTERM", &id]);
    let stopped = || {
        containerd
            .ctr_ok(&["-n", CTR_NAMESPACE, "tasks", "ls"])
            .lines()
            .any(|line| line.starts_with(&id) && line.contains("STOPPED"))
    };
    wait_until(Duration::from_secs(10), stopped);
    let took = start.elapsed();
    assert!(stopped(), "pause ignored SIGTERM");
    assert!(took < Duration::from_secs(2), "pause took {took:?} to stop");
    containerd.ctr_ok(&["-n", CTR_NAMESPACE, "tasks", "delete", &id]);
    containerd.ctr_ok(&["-n", CTR_NAMESPACE, "containers", "delete", &id]);
    drop(containerd);
    footprint.assert_gone();
}
