//! Escape tests of issue 9, from inside hull containers (QEMU TCG on this
//! host) through a real containerd:
//!
//! - a fork bomb stays within its container's pids limit (Hull's
//!   `default_pids_limit`, here 64), its pod's other container still execs,
//!   containerd answers and the host keeps its timing;
//! - writes through symlinks in the rootfs (absolute, `..`, a mount
//!   destination, a host path) land in the container's own rootfs, inside
//!   the pod's shared directory, never elsewhere on the host;
//! - /dev/kvm cannot be reached (the guest kernel has no such device), and
//!   neither can the host's sockets: containerd's, the shim's, the VM's
//!   vsock and virtio-fs sockets, nor containerd's socket bind-mounted into
//!   the container, nor the agent over vsock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::containerd::CRI_NAMESPACE;
use hull_tests::cri::ContainerSpec;
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::{text, unique_id};

const NS: &str = "hull-escape";
const PIDS_LIMIT: u64 = 64;

use hull_tests::serial;

fn start() -> HullRuntime {
    HullRuntime::start_with_config(NS, true, &format!("default_pids_limit = {PIDS_LIMIT}\n"))
}

fn assert_no_leftovers(rt: &HullRuntime) {
    let left = rt.leftovers(Duration::from_secs(20));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// `pids.current` and `pids.limit` of task `id` from `ctr tasks metrics`,
/// which the agent reads from the container's cgroup in the guest.
fn pids_of(rt: &HullRuntime, namespace: &str, id: &str) -> Option<(u64, u64)> {
    let output = rt
        .containerd
        .ctr(&["-n", namespace, "tasks", "metrics", id]);
    let metrics = text(&output.stdout);
    let value = |name: &str| -> Option<u64> {
        metrics
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((value("pids.current")?, value("pids.limit")?))
}

/// The worst lateness of `rounds` host sleeps of 100 ms and the slowest of
/// as many `true` processes: what a user of the host would feel.
fn host_latency(rounds: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..rounds {
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        worst = worst.max(started.elapsed().saturating_sub(Duration::from_millis(100)));
        let started = Instant::now();
        Command::new("/bin/true").status().expect("true");
        worst = worst.max(started.elapsed());
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the other (synchronous) tests of this file out.
#[allow(clippy::await_holding_lock)]
async fn a_fork_bomb_stays_within_its_pids_limit_and_the_pod_and_host_stay_usable() {
    let _serial = serial();
    let rt = start();
    let (mut client, pod) = rt.run_cri_pod(&rt.pod_spec("fork-bomb")).await;
    let calm = ContainerSpec::new("calm", BUSYBOX_IMAGE, &["sleep", "1000"]);
    let calm_id = client.run_container(&pod, &calm).await.expect("calm");
    let idle = host_latency(10);

    // The classic bomb, in a subshell; the container's init then becomes a
    // sleep (exec, no fork), so the container lives while the bomb runs.
    let bomb = ContainerSpec::new(
        "bomb",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "(f() { f | f & }; f) 2>/dev/null & exec sleep 1000",
        ],
    );
    let bomb_id = client.run_container(&pod, &bomb).await.expect("bomb");
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some((current, limit)) = pids_of(&rt, CRI_NAMESPACE, &bomb_id) {
            assert_eq!(limit, PIDS_LIMIT, "the bomb's container has no pids limit");
            assert!(current <= PIDS_LIMIT, "{current} processes past the limit");
            most = most.max(current);
            if most >= PIDS_LIMIT - 4 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        most >= PIDS_LIMIT - 4,
        "the bomb never filled its limit (at most {most} processes)"
    );

    // While it runs: the host keeps its timing, containerd answers, and the
    // pod's other container still execs (the agent and guest are fine).
    let busy = host_latency(10);
    assert!(
        busy < Duration::from_secs(3),
        "the host lagged {busy:?} under the bomb (idle: {idle:?})"
    );
    rt.containerd.ctr_ok(&["version"]);
    let exec = client
        .exec_sync(
            &calm_id,
            &["sh", "-c", "echo alive"],
            Duration::from_secs(60),
        )
        .await
        .expect("ExecSync in the calm container");
    assert_eq!((exec.stdout.as_str(), exec.exit_code), ("alive\n", 0));
    let (current, _) = pids_of(&rt, CRI_NAMESPACE, &bomb_id).expect("the bomb's pids");
    assert!(current <= PIDS_LIMIT, "{current} processes past the limit");
    eprintln!(
        "fork bomb: at most {most} of {PIDS_LIMIT} processes; host lag idle {idle:?}, under the bomb {busy:?}"
    );

    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
    drop(client);
    assert_no_leftovers(&rt);
}

/// A busybox rootfs at `dir/rootfs` whose symlinks point out of it every
/// way a path can; `outside` is a host directory next to it.
fn trapped_rootfs(dir: &Path, marker: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::symlink;
    let rootfs = hull_tests::rootfs::busybox(&dir.join("rootfs"));
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).expect("outside dir");
    symlink("/", rootfs.join("hostroot")).expect("hostroot");
    symlink("../../../../../../../../..", rootfs.join("up")).expect("up");
    // Relative and absolute names of the host directory next to the rootfs.
    symlink("../outside", rootfs.join("rel")).expect("rel");
    symlink(&outside, rootfs.join("abs")).expect("abs");
    // A file that the container writes, and a mount destination.
    symlink(
        format!("../../../../../../../../tmp/{marker}-motd"),
        rootfs.join("etc/motd"),
    )
    .expect("motd");
    symlink(
        format!("/../../../../../tmp/{marker}-mnt"),
        rootfs.join("mnt"),
    )
    .expect("mnt");
    (rootfs, outside)
}

#[test]
fn writes_through_symlinks_in_the_rootfs_stay_in_the_pods_shared_directory() {
    let _serial = serial();
    let rt = start();
    let dir = tempfile::tempdir().expect("dir");
    let marker = unique_id("hull-escape");
    let (rootfs, outside) = trapped_rootfs(dir.path(), &marker);
    let volume = dir.path().join("volume");
    std::fs::create_dir_all(&volume).expect("volume");
    let script = format!(
        "m={marker}; \
         for p in /hostroot/tmp /up/tmp /proc/self/root/tmp /tmp/../../.. /rel /abs; do \
           echo x > $p/$m-w 2>/dev/null && echo wrote $p; \
         done; \
         echo x > /etc/motd 2>/dev/null && echo wrote motd; \
         mkdir -p /a/b && ln -s ../../../../../../.. /a/b/c && echo x > /a/b/c/tmp/$m-late && echo wrote late; \
         ln -s /tmp /tmpd && mkdir -p /tmpd/x && echo x > /tmpd/x/$m-dir && echo wrote dir; \
         true"
    );
    let out = rt.run_ok(&[
        "--rm",
        // No image, so no image config: PATH comes from here.
        "--env",
        "PATH=/bin",
        "--rootfs",
        rootfs.to_str().expect("utf-8"),
        &unique_id("s"),
        "sh",
        "-c",
        &script,
    ]);
    eprintln!("inside the container:\n{out}");
    // A volume whose destination is a symlink out of the rootfs: the
    // guest's libcontainer refuses it, or mounts it inside the rootfs.
    let mount = format!(
        "type=bind,src={},dst=/mnt,options=rbind:rw",
        volume.display()
    );
    let id = unique_id("m");
    let mut args = vec!["--rm", "--mount", &mount];
    args.extend([
        "--env",
        "PATH=/bin",
        "--rootfs",
        rootfs.to_str().expect("utf-8"),
        &id,
    ]);
    let script = format!("echo x > /mnt/{marker}-vol && echo wrote vol");
    args.extend(["sh", "-c", &script]);
    let output = rt.run(&args);
    eprintln!(
        "a volume on a symlink: {}\n{}{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    if !output.status.success() {
        let _ = rt.containerd.ctr(&["-n", NS, "containers", "rm", &id]);
    }

    // Nothing anywhere on the host but in the rootfs (bound into the pod's
    // shared directory) or the volume.
    for suffix in ["w", "motd", "mnt", "vol", "late", "dir"] {
        let name = format!("{marker}-{suffix}");
        for host in [Path::new("/tmp").join(&name), Path::new("/").join(&name)] {
            assert!(!host.exists(), "the container wrote {}", host.display());
        }
        assert!(
            hull_tests::containerd::mounts_under(&Path::new("/tmp").join(&name)).is_empty(),
            "a mount at /tmp/{name} on the host"
        );
    }
    let escaped: Vec<_> = std::fs::read_dir(&outside)
        .expect("outside dir")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert!(
        escaped.is_empty(),
        "written next to the rootfs: {escaped:?}"
    );
    // The writes did happen, in the container's own /tmp: the guest resolved
    // every symlink against the container's root.
    for (line, file) in [
        ("wrote /hostroot/tmp", format!("tmp/{marker}-w")),
        ("wrote late", format!("tmp/{marker}-late")),
        ("wrote motd", format!("tmp/{marker}-motd")),
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
        assert!(
            rootfs.join(&file).exists(),
            "{file} is not in the rootfs:\n{out}"
        );
    }
    assert_no_leftovers(&rt);
}

#[test]
fn dev_kvm_and_the_hosts_sockets_are_out_of_reach() {
    let _serial = serial();
    let rt = start();
    let dir = tempfile::tempdir().expect("dir");
    let probe_dir = dir.path().join("probe");
    std::fs::create_dir_all(&probe_dir).expect("probe dir");
    hull_tests::probe::build(&probe_dir);
    let containerd_socket = rt.containerd.socket().display().to_string();
    let id = unique_id("k");
    let probe_mount = format!(
        "type=bind,src={},dst=/probe,options=rbind:ro",
        probe_dir.display()
    );
    rt.run_ok(&[
        "-d",
        "--mount",
        &probe_mount,
        BUSYBOX_IMAGE,
        &id,
        "sleep",
        "1000",
    ]);
    let pod = rt.pod_dirs().pop().expect("the pod's directory");
    let address = rt.containerd.socket().as_os_str().as_encoded_bytes();
    let shim_socket = hull_tests::containerd::shim_socket_of(address, NS.as_bytes(), id.as_bytes());
    let host_sockets: Vec<String> = [
        PathBuf::from(&containerd_socket),
        PathBuf::from("/run/containerd/containerd.sock"),
        shim_socket,
        // The QEMU backend keeps vhost-device-vsock's sockets in a
        // directory of their own (owned by the user it runs as).
        [pod.join("vm/vsock/vsock.uds"), pod.join("vm/vsock.uds")]
            .into_iter()
            .find(|path| path.exists())
            .unwrap_or_else(|| pod.join("vm/vsock.uds")),
        pod.join("vm/fs.sock"),
    ]
    .iter()
    .map(|path| path.display().to_string())
    .collect();
    for socket in &host_sockets[2..] {
        assert!(Path::new(socket).exists(), "no {socket} on the host");
    }
    let script = format!(
        "[ -e /dev/kvm ] && echo kvm-present; \
         grep -qw kvm /proc/misc && echo kvm-in-the-guest-kernel; \
         mknod /tmp/kvm c 10 232 && {{ (exec 3<>/tmp/kvm) 2>/dev/null && echo kvm-opened; }}; \
         /probe/probe selftest; \
         /probe/probe unix {}; \
         /probe/probe vsock 1:1024 2:1024 3:1024 2:1023",
        host_sockets.join(" ")
    );
    let output = rt.containerd.ctr(&[
        "-n",
        NS,
        "tasks",
        "exec",
        "--exec-id",
        "probe",
        &id,
        "sh",
        "-c",
        &script,
    ]);
    let out = text(&output.stdout);
    eprintln!("inside the container:\n{out}{}", text(&output.stderr));
    assert!(output.status.success(), "{output:?}");
    assert!(!out.contains("kvm-"), "/dev/kvm is reachable:\n{out}");
    // The probe can connect (to a socket of its own), so its refusals mean
    // something; every host socket refuses. Over vsock the guest's kernel
    // accepts a connection to the agent's port by itself (local CID 1, the
    // guest's own CID 3), so what counts is that the agent never answers
    // one: it drops every peer but the host.
    assert!(out.contains("selftest: connected"), "{out}");
    let outcome = |target: &str| {
        out.lines()
            .find_map(|line| line.strip_prefix(&format!("{target}: ")))
            .unwrap_or_else(|| panic!("no result for {target}:\n{out}"))
            .to_owned()
    };
    for socket in &host_sockets {
        assert!(
            outcome(socket).starts_with("refused: "),
            "{socket} is reachable:\n{out}"
        );
    }
    for target in ["1:1024", "2:1024", "3:1024", "2:1023"] {
        let outcome = outcome(target);
        assert!(
            outcome.starts_with("refused: ") || outcome == "closed",
            "vsock {target} {outcome}: the agent's API is reachable from a container:\n{out}"
        );
    }

    rt.containerd
        .ctr_ok(&["-n", NS, "tasks", "kill", "-s", "KILL", &id]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rt
        .containerd
        .ctr(&["-n", NS, "tasks", "rm", &id])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the task did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.containerd.ctr_ok(&["-n", NS, "containers", "rm", &id]);

    // containerd's socket as a volume, as a docker.sock mount would be: a
    // socket on virtio-fs leads nowhere, if the container starts at all.
    let socket_mount =
        format!("type=bind,src={containerd_socket},dst=/containerd.sock,options=rbind:rw");
    let mut args = vec!["--rm", "--mount", &probe_mount];
    let id = unique_id("v");
    args.extend(["--mount", &socket_mount, BUSYBOX_IMAGE, &id]);
    args.extend(["/probe/probe", "unix", "/containerd.sock"]);
    let output = rt.run(&args);
    let out = text(&output.stdout);
    eprintln!(
        "containerd's socket as a volume: {}\n{out}{}",
        output.status,
        text(&output.stderr)
    );
    assert!(
        !out.contains(": connected"),
        "containerd's socket answered inside the container:\n{out}"
    );
    if output.status.success() {
        assert!(out.contains("/containerd.sock: refused: "), "{out}");
    } else {
        // Refused at creation; the container is gone with its VM.
        let _ = rt.containerd.ctr(&["-n", NS, "containers", "rm", &id]);
    }
    assert_no_leftovers(&rt);
}
