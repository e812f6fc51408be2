//! `containerd-shim-hull-v2` through a real containerd (Debian's 1.6) and
//! its CRI plugin: `ctr` basics, a two-container CRI pod in one VM, a VMM
//! killed under a running task, and configuration errors that name the
//! option. (Leak-free create/delete cycles: tests/tests/soak.rs.)
//!
//! On this host the pods run under QEMU TCG (no hardware virtualization).
//! The last test boots the KVM test host and re-runs the ctr, CRI and crash
//! tests in it, where the default backend is hull-vmm.

use std::process::{Command, Stdio};
use std::time::Duration;

use hull_tests::containerd::HULL_RUNTIME;
use hull_tests::cri::{self, BindMount, ContainerSpec};
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::{kvm_host, text, unique_id};

const NS: &str = "hull-test";

use hull_tests::serial;

fn assert_no_leftovers(rt: &HullRuntime) {
    let left = rt.leftovers(Duration::from_secs(15));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

#[test]
fn ctr_runs_exec_kill_and_tty_in_a_hull() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, false);

    // Output, the guest's own kernel, and only loopback: a plain ctr
    // container has no pod network namespace to mirror.
    let out = rt.run_ok(&[
        "--rm",
        BUSYBOX_IMAGE,
        &unique_id("c"),
        "sh",
        "-c",
        // Ethernet interfaces (type 1); lo and the kernel's own sit0
        // are not.
        "echo hello; uname -r; for i in /sys/class/net/*; do \
             [ \"$(cat $i/type)\" = 1 ] && echo ether ${i##*/}; done; \
             ip -o link show lo | grep -q ',UP' && echo lo up",
    ]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello"), "{out}");
    let host = nix::sys::utsname::uname().expect("uname");
    assert_ne!(
        lines.next(),
        Some(&*host.release().to_string_lossy()),
        "ran on the host's kernel"
    );
    assert_eq!(lines.collect::<Vec<_>>(), ["lo up"], "{out}");

    // Exit codes propagate.
    let output = rt.run(&[
        "--rm",
        BUSYBOX_IMAGE,
        &unique_id("c"),
        "sh",
        "-c",
        "echo oops >&2; exit 3",
    ]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(text(&output.stderr), "oops\n");

    // A detached task: exec into it, then kill it.
    let id = unique_id("d");
    rt.run_ok(&["-d", BUSYBOX_IMAGE, &id, "sleep", "1000"]);
    HullRuntime::check_backend(&rt.pod_dirs());
    let exec = rt.containerd.ctr(&[
        "-n",
        NS,
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo from-exec; exit 4",
    ]);
    assert_eq!(text(&exec.stdout), "from-exec\n", "{exec:?}");
    assert_eq!(exec.status.code(), Some(4));
    let pids = rt.containerd.ctr_ok(&["-n", NS, "tasks", "ps", &id]);
    assert!(pids.lines().count() >= 2, "{pids}");
    // Pause and resume freeze the container in the guest; metrics come from
    // the guest's cgroup.
    rt.containerd.ctr_ok(&["-n", NS, "tasks", "pause", &id]);
    assert_eq!(rt.task_status(&id).as_deref(), Some("PAUSED"));
    rt.containerd.ctr_ok(&["-n", NS, "tasks", "resume", &id]);
    assert_eq!(rt.task_status(&id).as_deref(), Some("RUNNING"));
    let metrics = rt.containerd.ctr_ok(&["-n", NS, "tasks", "metrics", &id]);
    assert!(metrics.contains("pids.current"), "{metrics}");
    rt.containerd
        .ctr_ok(&["-n", NS, "tasks", "kill", "-s", "KILL", &id]);
    rt.wait_stopped(&id, Duration::from_secs(30));
    let removed = rt.containerd.ctr(&["-n", NS, "tasks", "rm", &id]);
    assert!(text(&removed.stderr).contains("137"), "{removed:?}");
    rt.containerd.ctr_ok(&["-n", NS, "containers", "rm", &id]);

    // A tty: ctr needs a terminal of its own, which script(1) provides.
    let command = format!(
        "ctr --address {} -n {NS} run --runtime {HULL_RUNTIME} --rm -t {BUSYBOX_IMAGE} {} sh -c 'tty; echo tty-ok'",
        rt.containerd.socket().display(),
        unique_id("t")
    );
    let tty = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let out = text(&tty.stdout);
    assert!(
        out.contains("/dev/pts/") && out.contains("tty-ok"),
        "{tty:?}"
    );

    assert_no_leftovers(&rt);
}

#[test]
fn a_killed_vmm_ends_the_task_with_an_error_and_is_cleaned_up() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, false);
    let mut events = Command::new("ctr")
        .arg("--address")
        .arg(rt.containerd.socket())
        .args(["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr events");

    let id = unique_id("crash");
    rt.run_ok(&["-d", BUSYBOX_IMAGE, &id, "sleep", "1000"]);
    HullRuntime::check_backend(&rt.pod_dirs());
    let pod = rt.pod_dirs().pop().expect("a pod directory");
    let (name, vmm) = HullRuntime::vm_processes(&pod)
        .into_iter()
        .rev()
        .find(|(name, _)| name == "qemu" || name == "hull-vmm")
        .expect("the VMM's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the VMM");

    rt.wait_stopped(&id, Duration::from_secs(30));
    let removed = rt.containerd.ctr(&["-n", NS, "tasks", "rm", &id]);
    assert!(
        text(&removed.stderr).contains("exit code 255"),
        "{removed:?}"
    );
    rt.containerd.ctr_ok(&["-n", NS, "containers", "rm", &id]);
    assert_no_leftovers(&rt);

    // containerd heard of the exit.
    let _ = events.kill();
    let output = events.wait_with_output().expect("events output");
    let events = text(&output.stdout);
    assert!(
        events
            .lines()
            .any(|line| line.contains("/tasks/exit") && line.contains(&id)),
        "no TaskExit for {id} in:\n{events}"
    );
    for topic in ["/tasks/create", "/tasks/start", "/tasks/delete"] {
        assert!(
            events
                .lines()
                .any(|line| line.contains(topic) && line.contains(&id)),
            "no {topic} for {id} in:\n{events}"
        );
    }
    // The shim logged what died.
    assert!(
        rt.containerd
            .log()
            .contains(&format!("{name} (pid {vmm}) was killed by SIGKILL")),
        "{}",
        rt.containerd.log_tail(40)
    );
}

#[test]
fn a_killed_shim_is_cleaned_up_by_the_delete_command() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, false);
    let id = unique_id("orphan");
    rt.run_ok(&["-d", BUSYBOX_IMAGE, &id, "sleep", "1000"]);
    let pod = rt.pod_dirs().pop().expect("a pod directory");
    let vm: Vec<i32> = HullRuntime::vm_processes(&pod)
        .into_iter()
        .map(|(_, pid)| pid)
        .collect();
    let shims = rt.containerd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");

    // containerd notices, runs `containerd-shim-hull-v2 delete`, and that
    // kills the orphaned VM and removes the pod's mounts and directory.
    let left = rt.leftovers(Duration::from_secs(30));
    assert!(
        left.is_empty(),
        "left behind:\n{}\ncontainerd log:\n{}",
        left.join("\n"),
        rt.containerd.log_tail(30)
    );
    for pid in vm {
        assert!(
            hull_tests::containerd::process_state(pid).is_none_or(|state| state == 'Z'),
            "VM process {pid} survived its shim"
        );
    }
    let _ = rt.containerd.ctr(&["-n", NS, "tasks", "rm", "-f", &id]);
    rt.containerd.ctr_ok(&["-n", NS, "containers", "rm", &id]);
}

#[test]
fn an_agent_policy_file_denies_exec_and_a_bad_one_is_named() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, false);
    let policy = rt.config_path.with_file_name("policy.toml");
    std::fs::write(&policy, "denied_rpcs = [\"ExecProcess\"]\n").expect("policy");
    let config = rt.config_path.with_file_name("with-policy.toml");
    let base = std::fs::read_to_string(&rt.config_path).expect("config");
    std::fs::write(
        &config,
        format!(
            "{base}agent_policy_file = {:?}\n",
            policy.display().to_string()
        ),
    )
    .expect("config with a policy");
    let config_arg = config.to_str().expect("utf-8");

    let id = unique_id("policy");
    rt.run_ok(&[
        "-d",
        "--runtime-config-path",
        config_arg,
        BUSYBOX_IMAGE,
        &id,
        "sleep",
        "1000",
    ]);
    let exec = rt.containerd.ctr(&[
        "-n",
        NS,
        "tasks",
        "exec",
        "--exec-id",
        "shell",
        &id,
        "echo",
        "in",
    ]);
    assert!(!exec.status.success(), "{exec:?}");
    assert!(
        text(&exec.stderr).contains("ExecProcess is denied by the sandbox's agent policy"),
        "{exec:?}"
    );
    rt.containerd
        .ctr_ok(&["-n", NS, "tasks", "kill", "-s", "KILL", &id]);
    rt.wait_stopped(&id, Duration::from_secs(30));
    rt.containerd.ctr_ok(&["-n", NS, "tasks", "rm", &id]);
    rt.containerd.ctr_ok(&["-n", NS, "containers", "rm", &id]);

    // A name the agent does not know fails the pod, named.
    std::fs::write(&policy, "denied_rpcs = [\"Exec\"]\n").expect("policy");
    let output = rt.run(&[
        "--rm",
        "--runtime-config-path",
        config_arg,
        BUSYBOX_IMAGE,
        &unique_id("badpolicy"),
        "true",
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("policy.denied_rpcs[0]: ")
            && text(&output.stderr).contains("is not an RPC of hull.agent.v1"),
        "{output:?}"
    );
    assert_no_leftovers(&rt);
}

#[test]
fn bad_configuration_and_annotations_are_named() {
    let _serial = serial();
    let rt = HullRuntime::start_with_config(
        NS,
        false,
        "enable_annotations = [\"io.hull.vcpus\", \"io.hull.memory_mib\"]\n",
    );
    // Annotations are refused, named, where the config does not enable
    // them (an empty config file: every default).
    let defaults = rt.config_path.with_file_name("defaults.toml");
    std::fs::write(&defaults, "").expect("empty config");
    let output = rt.run(&[
        "--rm",
        "--runtime-config-path",
        defaults.to_str().expect("utf-8"),
        "--annotation",
        "io.hull.memory_mib=16384",
        BUSYBOX_IMAGE,
        &unique_id("a"),
        "true",
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("io.hull.memory_mib: is not enabled"),
        "{output:?}"
    );
    // An annotation beyond the limits.
    let output = rt.run(&[
        "--rm",
        "--annotation",
        "io.hull.vcpus=99",
        BUSYBOX_IMAGE,
        &unique_id("a"),
        "true",
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("io.hull.vcpus: 99 is not between 1 and"),
        "{output:?}"
    );
    let output = rt.run(&[
        "--rm",
        "--annotation",
        "io.hull.memory_mib=lots",
        BUSYBOX_IMAGE,
        &unique_id("a"),
        "true",
    ]);
    assert!(
        text(&output.stderr).contains("io.hull.memory_mib: \"lots\" is not a whole number"),
        "{output:?}"
    );

    // A config file given as the runtime option, with a bad value.
    let bad = rt.config_path.with_file_name("bad.toml");
    std::fs::write(&bad, "default_vcpus = 0\n").expect("bad config");
    let output = rt.run(&[
        "--rm",
        "--runtime-config-path",
        bad.to_str().expect("utf-8"),
        BUSYBOX_IMAGE,
        &unique_id("a"),
        "true",
    ]);
    assert!(
        text(&output.stderr).contains("default_vcpus: 0 is not between 1 and"),
        "{output:?}"
    );

    // A config file named by the runtime option that is not there, and one
    // that is not TOML: both name the file, and no VM is started.
    let missing = rt.config_path.with_file_name("missing.toml");
    let malformed = rt.config_path.with_file_name("malformed.toml");
    std::fs::write(&malformed, "backend = \"hull\nkernel = [\n").expect("malformed config");
    for (path, expected) in [(&missing, "No such file"), (&malformed, "malformed.toml")] {
        let output = rt.run(&[
            "--rm",
            "--runtime-config-path",
            path.to_str().expect("utf-8"),
            BUSYBOX_IMAGE,
            &unique_id("a"),
            "true",
        ]);
        assert!(!output.status.success(), "{output:?}");
        let error = text(&output.stderr);
        assert!(
            error.contains(&*path.to_string_lossy()) && error.contains(expected),
            "{}: {error}",
            path.display()
        );
        assert!(rt.pod_dirs().is_empty(), "a pod directory for {path:?}");
    }

    // An entrypoint that the image does not have: the VM boots, the
    // container cannot be created, and the error names the program.
    let output = rt.run(&[
        "--rm",
        BUSYBOX_IMAGE,
        &unique_id("a"),
        "/no/such/entrypoint",
    ]);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        text(&output.stderr).contains("/no/such/entrypoint"),
        "{output:?}"
    );
    assert_no_leftovers(&rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the other (synchronous) tests of this file out
// while the pod runs; nothing else in this runtime takes it.
#[allow(clippy::await_holding_lock)]
async fn a_cri_pod_runs_two_containers_in_one_vm() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let (mut client, pod) = rt.run_cri_pod(&rt.pod_spec("two-in-a-hull")).await;
    HullRuntime::check_backend(&rt.pod_dirs());
    assert_eq!(rt.pod_dirs().len(), 1, "one VM for the pod");

    // One listens on a localhost port, the other connects: they share the
    // VM's network stack. Each prints the kernel's boot id: the same VM.
    let listener = ContainerSpec::new(
        "listener",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; echo pong | nc -l -p 8080",
        ],
    );
    let listener_id = client
        .run_container(&pod, &listener)
        .await
        .unwrap_or_else(|err| panic!("listener: {err}\n{}", rt.containerd.log_tail(80)));
    let dialer = ContainerSpec::new(
        "dialer",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; until echo ping | nc 127.0.0.1 8080; do sleep 0.2; done",
        ],
    );
    let dialer_id = client.run_container(&pod, &dialer).await.expect("dialer");
    for id in [&dialer_id, &listener_id] {
        let code = client
            .wait_exited(id, Duration::from_secs(60))
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "{id} did not exit: {status:?}\n{}",
                    rt.containerd.log_tail(60)
                )
            });
        assert_eq!(code, 0, "container {id}");
    }
    assert_eq!(rt.pod_dirs().len(), 1, "still one VM for the pod");
    let dialer_log = cri::log_text(&pod.log_file(&dialer.log_path()), "stdout");
    let listener_log = cri::log_text(&pod.log_file(&listener.log_path()), "stdout");
    let (dialer_boot, dialer_got) = dialer_log.split_once('\n').expect("dialer output");
    let (listener_boot, listener_got) = listener_log.split_once('\n').expect("listener output");
    assert_eq!((dialer_got, listener_got), ("pong\n", "ping\n"));
    assert_eq!(
        dialer_boot, listener_boot,
        "the containers ran in different VMs"
    );
    let host_boot =
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("host boot id");
    assert_ne!(dialer_boot, host_boot.trim(), "a container ran on the host");

    // Volumes: read-only stays read-only in the guest, a read-write one
    // takes writes that the host sees; resolv.conf comes from CRI.
    let read_only = rt.state_dir.with_file_name("ro");
    let read_write = rt.state_dir.with_file_name("rw");
    std::fs::create_dir_all(&read_only).expect("ro dir");
    std::fs::create_dir_all(&read_write).expect("rw dir");
    std::fs::write(read_only.join("note"), "from the host\n").expect("note");
    let mut volumes = ContainerSpec::new(
        "volumes",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "cat /ro/note; touch /ro/x 2>/dev/null && echo ro-writable || echo ro-refused; \
             echo written > /rw/out; echo resolv:; cat /etc/resolv.conf",
        ],
    );
    volumes.mounts = vec![
        BindMount {
            host_path: read_only.clone(),
            container_path: "/ro".into(),
            readonly: true,
            ..Default::default()
        },
        BindMount {
            host_path: read_write.clone(),
            container_path: "/rw".into(),
            readonly: false,
            ..Default::default()
        },
    ];
    let volumes_id = client
        .run_container(&pod, &volumes)
        .await
        .unwrap_or_else(|status| {
            panic!(
                "volumes: {status:?}\ncontainerd's and the shim's log:\n{}",
                rt.containerd.log_tail(100)
            )
        });
    let code = client
        .wait_exited(&volumes_id, Duration::from_secs(60))
        .await
        .expect("volumes exit");
    let log = cri::log_text(&pod.log_file(&volumes.log_path()), "stdout");
    assert_eq!(code, 0, "{log}");
    let (checks, resolv) = log.split_once("resolv:\n").expect("resolv marker");
    assert_eq!(checks, "from the host\nro-refused\n");
    assert_eq!(
        std::fs::read_to_string(read_write.join("out")).expect("rw out"),
        "written\n"
    );
    assert!(!read_only.join("x").exists());
    let pod_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(
        resolv.trim(),
        pod_resolv.trim(),
        "/etc/resolv.conf did not reach the guest"
    );

    // ExecSync in a running container.
    let sleeper = ContainerSpec::new("sleeper", BUSYBOX_IMAGE, &["sleep", "1000"]);
    let sleeper_id = client.run_container(&pod, &sleeper).await.expect("sleeper");
    let exec = client
        .exec_sync(
            &sleeper_id,
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            Duration::from_secs(30),
        )
        .await
        .expect("ExecSync");
    assert_eq!(
        (exec.stdout.as_str(), exec.stderr.as_str(), exec.exit_code),
        ("out\n", "err\n", 7)
    );

    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
    drop(client);
    assert_no_leftovers(&rt);
}

/// What a VM cannot give a container is refused before any VM boots,
/// naming the field: the host's network namespace (`--net-host`), and an
/// AppArmor profile of the host's (the guest has no AppArmor; containerd's
/// default profile, which every container gets on an AppArmor host, is the
/// exception, docs/SECURITY.md).
#[test]
fn the_hosts_network_and_a_hosts_apparmor_profile_are_refused() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, false);
    for (flags, says) in [
        (
            &["--net-host"][..],
            "linux.namespaces: has no network namespace",
        ),
        (
            &["--apparmor-profile", "hull-test-profile"][..],
            "process.apparmorProfile: \"hull-test-profile\"",
        ),
    ] {
        let id = unique_id("refused");
        let mut args = vec!["--rm"];
        args.extend_from_slice(flags);
        args.extend([BUSYBOX_IMAGE, id.as_str(), "true"]);
        let output = rt.run(&args);
        assert!(
            !output.status.success() && text(&output.stderr).contains(says),
            "{flags:?}: {output:?}"
        );
        assert!(rt.pod_dirs().is_empty(), "{flags:?}: a VM was started");
    }
    assert_no_leftovers(&rt);
}

#[test]
fn the_shim_runs_pods_with_the_hull_backend_in_the_kvm_test_host() {
    kvm_host::rerun_under_hull_vmm(
        &[
            "ctr_runs_exec_kill_and_tty_in_a_hull",
            "a_cri_pod_runs_two_containers_in_one_vm",
            "a_killed_vmm_ends_the_task_with_an_error_and_is_cleaned_up",
        ],
        Duration::from_secs(1200),
    );
}
