//! The guest image under the QEMU backend (TCG on hosts without hardware
//! virtualization): the agent as PID 1 in a real guest kernel, reached over
//! hybrid vsock, running containers whose rootfs comes over virtio-fs.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use hull_hypervisor::{Qemu, VmError};
use hull_proto::v1 as api;
use hull_tests::agent::{AgentUnderTest, pipes};
use hull_tests::vm::{BOOT_TIMEOUT, TestVm, vm_config};
use hull_tests::{spec, unique_id};

fn process_alive(pid: u32) -> bool {
    // A zombie is not alive; the VM's helpers are reaped by their owner.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_guest_runs_containers_from_virtio_fs_and_stops_clean() {
    let mut vm = TestVm::boot().await;
    let timeline = vm.vm().timeline();
    println!("boot timeline: {timeline}");
    assert!(timeline.first_console_line.is_some() && timeline.agent_ready.is_some());

    // 0. QEMU under its own seccomp filter, virtiofsd in its sandbox.
    hull_tests::confinement::assert_helpers_confined(vm.vm(), &vm.config.shared_dir);

    // 1. Boot and run.
    let health = vm.health().await;
    assert_eq!(health.api_version, api::API_VERSION);
    let details = vm.guest_details().await;
    assert!(details.pid1, "the agent is not PID 1: {details:?}");
    assert_eq!(details.cgroup_mode, "v2");

    let id = unique_id("hello");
    let hello = vm
        .run_container(&id, &spec::simple(&["echo", "hello from a hull"]))
        .await;
    assert_eq!(
        hello.stdout_text(),
        "hello from a hull\n",
        "console:\n{}",
        vm.log()
    );
    assert_eq!(hello.wait.exit_status, 0);
    vm.remove(&id, false).await.expect("remove");

    let id = unique_id("exit");
    let seven = vm
        .run_container(&id, &spec::simple(&["sh", "-c", "exit 7"]))
        .await;
    assert_eq!(seven.wait.exit_status, 7);
    vm.remove(&id, false).await.expect("remove");

    // 2. The guest's kernel, not the host's.
    let id = unique_id("version");
    let version = vm
        .run_container(&id, &spec::simple(&["cat", "/proc/version"]))
        .await;
    let host_version = std::fs::read_to_string("/proc/version").expect("host version");
    assert_ne!(version.stdout_text(), host_version);
    assert!(
        version.stdout_text().contains(&details.kernel_release),
        "{} does not name {}",
        version.stdout_text(),
        details.kernel_release
    );
    vm.remove(&id, false).await.expect("remove");

    // 3. A 32 MiB container that allocates 64 MiB is OOM-killed, and says so.
    let mut oom_events = vm
        .client
        .oom_events(api::OomEventsRequest {})
        .await
        .expect("oom stream")
        .into_inner();
    let id = unique_id("oom");
    let mut hog = spec::simple(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    hog["linux"]["resources"] =
        serde_json::json!({ "memory": { "limit": 33554432, "swap": 33554432 } });
    let oom = vm.run_container(&id, &hog).await;
    assert_eq!(
        oom.wait.exit_status,
        137,
        "{}",
        String::from_utf8_lossy(&oom.stderr)
    );
    assert!(oom.wait.oom_killed, "{:?}", oom.wait);
    let event = tokio::time::timeout(Duration::from_secs(10), oom_events.next())
        .await
        .expect("an OOM event within 10 s")
        .expect("the stream is open")
        .expect("event");
    assert_eq!(event.container_id, id);
    vm.remove(&id, false).await.expect("remove");

    // 4. A write in the guest shows on the host side of the share.
    let id = unique_id("write");
    let rootfs = vm.rootfs(&id);
    vm.create(
        &id,
        &spec::simple(&["sh", "-c", "echo written in the guest > /data/out"]),
        &rootfs,
        pipes(false),
    )
    .await
    .expect("create");
    let stdout = vm.read_output(&id, "", api::OutputStream::Stdout).await;
    let stderr = vm.read_output(&id, "", api::OutputStream::Stderr).await;
    vm.start_container(&id).await.expect("start");
    assert_eq!(vm.wait(&id, "").await.exit_status, 0);
    let _ = (stdout.await, stderr.await);
    let written = std::fs::read_to_string(vm.host_path(&format!("{id}/rootfs/data/out")))
        .expect("the guest's file on the host");
    assert_eq!(written, "written in the guest\n");
    vm.remove(&id, false).await.expect("remove");

    // 5. A clean stop leaves no process, socket or mount behind.
    let pids: Vec<u32> = vm.vm().pids().into_iter().map(|(_, pid)| pid).collect();
    let work_dir = vm.vm().work_dir().to_owned();
    assert!(vm.shutdown().await, "the guest did not power off by itself");
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} survived the stop");
    }
    assert!(
        !work_dir.exists(),
        "{} (sockets) is left",
        work_dir.display()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let shared = vm.config.shared_dir.display().to_string();
    assert!(
        !mounts.contains(&shared),
        "a mount of the shared directory is left"
    );
}

fn start_error(backend: &Qemu, config: &hull_hypervisor::VmConfig) -> VmError {
    backend
        .start(config)
        .map(drop)
        .expect_err("the start should fail")
}

#[test]
fn bad_paths_and_a_missing_qemu_are_named_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let config = vm_config(dir.path());
    let backend = Qemu::detect();

    let mut missing_kernel = config.clone();
    missing_kernel.kernel = "/no/such/vmlinux".into();
    let err = start_error(&backend, &missing_kernel).to_string();
    assert_eq!(err, "kernel: /no/such/vmlinux does not exist");

    let mut missing_initrd = config.clone();
    missing_initrd.initrd = "/no/such/initrd".into();
    let err = start_error(&backend, &missing_initrd).to_string();
    assert_eq!(err, "initrd: /no/such/initrd does not exist");

    let no_qemu = Qemu {
        qemu: "/no/such/qemu-system-x86_64".into(),
        ..backend.clone()
    };
    let err = start_error(&no_qemu, &config).to_string();
    assert!(
        err.starts_with("/no/such/qemu-system-x86_64 not found"),
        "{err}"
    );
    let no_qemu_in_path = Qemu {
        qemu: "qemu-system-nonexistent".into(),
        ..backend
    };
    let err = start_error(&no_qemu_in_path, &config).to_string();
    assert!(
        err.contains("qemu-system-nonexistent not found: it is not in PATH"),
        "{err}"
    );

    assert!(
        !config.work_dir.exists(),
        "a failed start left {}",
        config.work_dir.display()
    );
}

#[test]
fn virtiofsd_killed_during_boot_is_named_and_cleaned_up() {
    let dir = tempfile::tempdir().expect("dir");
    let config = vm_config(dir.path());
    let mut vm = Qemu::detect().start(&config).expect("start");
    let pids = vm.pids();
    let (_, virtiofsd) = *pids
        .iter()
        .find(|(name, _)| *name == "virtiofsd")
        .expect("virtiofsd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(virtiofsd as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill virtiofsd");
    let err = vm
        .wait_for_agent(hull_proto::v1::AGENT_VSOCK_PORT, BOOT_TIMEOUT)
        .expect_err("the boot should fail")
        .to_string();
    assert!(
        err.starts_with("virtiofsd (pid ") && err.contains(" was killed by SIGKILL during boot"),
        "{err}"
    );
    assert!(err.contains("timeline: VMM started"), "{err}");
    drop(vm);
    for (name, pid) in pids {
        assert!(!process_alive(pid), "{name} ({pid}) survived");
    }
    assert!(!Path::new(&config.work_dir).exists());
}

#[test]
fn the_backend_choice_follows_what_this_host_can_do() {
    use hull_hypervisor::host::{Accel, KvmFacts};
    let facts = KvmFacts::probe();
    let (accel, reason) = facts.choose();
    println!("{facts:?}: {} because {reason}", accel.as_str());
    if facts.has_module("kvm_pvm") && facts.cpu_flag.is_none() {
        // This project's machines: PVM KVM cannot boot Linux, so TCG.
        assert_eq!(accel, Accel::Tcg);
        assert!(reason.contains("PVM"), "{reason}");
    } else if facts.dev_kvm && facts.cpu_flag.is_some() {
        assert_eq!(accel, Accel::Kvm, "{reason}");
    } else {
        assert_eq!(accel, Accel::Tcg, "{reason}");
    }
}
