//! Fault injection (issue 9): kill -9 of each process a pod is made of, at
//! each point of the pod's life, through a real containerd. Each time
//! containerd gets an exit status for every task, the error names what
//! died, and nothing is left behind (processes, mounts, sockets, pod
//! directories).
//!
//! The points: while the VM boots (inside the first Create, before any task
//! exists); and, in one pod, at once: a running init process, a running
//! exec in it, and a second container that has exited but is not deleted
//! (its own exit status must survive the fault). Killing once under all
//! three checks each as well as three kills would, at a third of the boots.
//!
//! The processes: the VMM (QEMU or hull-vmm), virtiofsd, vhost-device-vsock
//! (QEMU only: hull-vmm serves hybrid vsock itself, so in the KVM test
//! host's hull backend there is none to kill), and the shim. The agent is
//! PID 1 of the guest, and the kernel ignores SIGKILL to init, even from
//! root; what can end it is a crash of its own. So a container in the
//! guest's PID namespace (CRI hostPID, which in a hull means the guest's)
//! with CAP_SYS_PTRACE overwrites the agent's code through /proc/1/mem: the
//! agent dies of SIGSEGV, the kernel panics ("Attempted to kill init!"),
//! and the shim must report the panic with its last console lines. That is
//! also the guest-kernel-panic case. The boot point does not apply to the
//! agent: nothing of it runs before the VM is up.
//!
//! On this host the pods run under QEMU TCG; the last test re-runs the
//! suite in the KVM test host, where the backend is hull-vmm.

use std::process::{Command, Stdio};
use std::time::Duration;

use hull_tests::cri::{self, ContainerSpec, CriClient};
use hull_tests::faults::{CRASH_PID_1, EventLog, SHIM_NAME, Victim, kill_9, poll};
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::kvm_host::{self, EXPECT_BACKEND};
use hull_tests::{text, unique_id};

const NS: &str = "hull-faults";
/// Under TCG on a busy host a boot takes tens of seconds.
const BOOT: Duration = Duration::from_secs(180);
/// How long containerd may take to hear of a death.
const NOTICE: Duration = Duration::from_secs(60);
/// The exit status the shim gives a process whose VM died under it.
const VM_GONE: u32 = 255;
/// What containerd is told of tasks whose shim died (as by runc's shim).
const SHIM_GONE: u32 = 137;

use hull_tests::serial;

fn assert_no_leftovers(rt: &HullRuntime) {
    // The KVM test host is slow: a shim can take many seconds to go.
    let left = rt.leftovers(NOTICE);
    assert!(
        left.is_empty(),
        "left behind:\n{}\ncontainerd log:\n{}",
        left.join("\n"),
        rt.containerd.log_tail(40)
    );
}

/// The pod directory once its VM processes are recorded.
fn recorded_pod(rt: &HullRuntime, victim: Victim) -> (std::path::PathBuf, String, i32) {
    poll("the pod's VM processes", BOOT, || {
        rt.pod_dirs().into_iter().find_map(|dir| {
            let recorded = !HullRuntime::vm_processes(&dir).is_empty();
            let (name, pid) = victim.find(&dir).filter(|_| recorded)?;
            Some((dir, name, pid))
        })
    })
}

/// What a dead process is called in the shim's errors and log.
fn killed(name: &str, pid: i32) -> String {
    format!("{name} (pid {pid}) was killed by SIGKILL")
}

/// containerd's log has the `delete` command's word that shim `pid` died.
fn wait_for_delete_report(rt: &HullRuntime, pid: i32) {
    let said = format!("{SHIM_NAME} (pid {pid}) of pod");
    let deadline = std::time::Instant::now() + NOTICE;
    while !rt.containerd.log().contains(&said) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {said:?} in containerd's log:\n{}",
            rt.containerd.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// kill -9 of `victim` while the first Create boots the VM: `ctr run`
/// fails with an error that names it, and nothing is left.
fn kill_during_boot(rt: &HullRuntime, victim: Victim) {
    let id = unique_id("boot");
    let (output, name, pid) = std::thread::scope(|scope| {
        let run = scope.spawn(|| rt.run(&["--rm", BUSYBOX_IMAGE, &id, "true"]));
        let (_, name, pid) = recorded_pod(rt, victim);
        kill_9(pid);
        (run.join().expect("ctr run"), name, pid)
    });
    assert!(!output.status.success(), "{output:?}");
    let error = text(&output.stderr);
    if victim == Victim::Shim {
        // containerd only sees the connection go; the `delete` command it
        // runs then says what died, in containerd's log.
        wait_for_delete_report(rt, pid);
    } else {
        assert!(
            error.contains(&format!("{} during boot", killed(&name, pid))),
            "{error}"
        );
    }
    assert_no_leftovers(rt);
    let _ = rt.containerd.ctr(&["-n", NS, "containers", "rm", &id]);
    assert_eq!(
        rt.containerd.ctr_ok(&["-n", NS, "containers", "ls", "-q"]),
        ""
    );
}

/// kill -9 of `victim` under a pod with a running init, a running exec
/// and an exited, undeleted container.
fn kill_under_tasks(rt: &HullRuntime, events: &EventLog, victim: Victim) {
    let pod = unique_id("pod");
    let done = unique_id("done");
    // Both containers in one pod, as CRI groups them.
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    let grouped = |args: &[&str]| {
        let mut full = vec!["--annotation", annotation.as_str(), "-d", BUSYBOX_IMAGE];
        full.extend_from_slice(args);
        rt.run_ok(&full);
    };
    grouped(&[&pod, "sleep", "1000"]);
    let (dir, name, pid) = recorded_pod(rt, victim);
    HullRuntime::check_backend(std::slice::from_ref(&dir));
    grouped(&[&done, "sh", "-c", "exit 3"]);
    rt.wait_stopped(&done, NOTICE);
    assert_eq!(rt.pod_dirs().len(), 1, "the two containers share a VM");

    let exec_out = tempfile::NamedTempFile::new().expect("exec output");
    let exec_err = tempfile::NamedTempFile::new().expect("exec errors");
    let mut exec = Command::new("ctr")
        .arg("--address")
        .arg(rt.containerd.socket())
        .args(["-n", NS, "tasks", "exec", "--exec-id", "e1", &pod])
        .args(["sh", "-c", "echo exec-up; exec sleep 1000"])
        .stdin(Stdio::null())
        .stdout(exec_out.reopen().expect("exec output"))
        .stderr(exec_err.reopen().expect("exec errors"))
        .spawn()
        .expect("ctr tasks exec");
    poll("the exec to run", NOTICE, || {
        let out = std::fs::read_to_string(exec_out.path()).unwrap_or_default();
        out.contains("exec-up").then_some(())
    });

    kill_9(pid);
    let exec_status = poll("ctr tasks exec to end", NOTICE, || {
        exec.try_wait().expect("wait for ctr")
    });
    let exec_error = std::fs::read_to_string(exec_err.path()).unwrap_or_default();
    if victim == Victim::Shim {
        // containerd cleans up after the shim with its `delete` command,
        // which kills the VM and says what died; the tasks are gone.
        wait_for_delete_report(rt, pid);
        // containerd's own TaskExit for a lost shim names no process.
        assert_eq!(events.wait_exit(&pod, "", NOTICE), SHIM_GONE);
        assert!(!exec_status.success(), "{exec_status} {exec_error}");
        poll("the tasks to go", NOTICE, || {
            (rt.task_status(&pod).is_none() && rt.task_status(&done).is_none()).then_some(())
        });
    } else {
        let reason = killed(&name, pid);
        // The exec's own error output says what died: `ctr` shows it, and
        // so would a CRI container log.
        assert_eq!(exec_status.code(), Some(VM_GONE as i32), "{exec_error}");
        assert!(
            exec_error.contains(&format!("hull: the pod's VM is gone: {reason}")),
            "exec stderr: {exec_error:?}\ncontainerd log:\n{}",
            rt.containerd.log_tail(40)
        );
        assert_eq!(events.wait_exit(&pod, "e1", NOTICE), VM_GONE);
        assert_eq!(events.wait_exit(&pod, &pod, NOTICE), VM_GONE);
        rt.wait_stopped(&pod, NOTICE);
        assert!(
            rt.containerd.log().contains(&reason),
            "containerd's log does not say {reason:?}:\n{}",
            rt.containerd.log_tail(40)
        );
        let removed = rt.containerd.ctr(&["-n", NS, "tasks", "rm", &pod]);
        assert!(
            text(&removed.stderr).contains("exit code 255"),
            "{removed:?}"
        );
        // The exited container keeps its own status.
        let removed = rt.containerd.ctr(&["-n", NS, "tasks", "rm", &done]);
        assert!(text(&removed.stderr).contains("exit code 3"), "{removed:?}");
    }
    for id in [&pod, &done] {
        rt.containerd.ctr_ok(&["-n", NS, "containers", "rm", id]);
    }
    assert_no_leftovers(rt);
}

/// Both points for one victim, with one containerd.
fn kill_at_every_point(victim: Victim) {
    let _serial = serial();
    let rt = HullRuntime::start(NS, false);
    let events = EventLog::start(&rt.containerd);
    kill_during_boot(&rt, victim);
    kill_under_tasks(&rt, &events, victim);
}

#[test]
fn a_killed_vmm_is_reported_at_every_point_and_cleaned_up() {
    kill_at_every_point(Victim::Vmm);
}

#[test]
fn a_killed_virtiofsd_is_reported_at_every_point_and_cleaned_up() {
    kill_at_every_point(Victim::Virtiofsd);
}

#[test]
fn a_killed_vhost_device_vsock_is_reported_at_every_point_and_cleaned_up() {
    if std::env::var(EXPECT_BACKEND).is_ok_and(|backend| backend == "hull-vmm") {
        // hull-vmm's hybrid vsock is its own; there is no such process.
        return;
    }
    kill_at_every_point(Victim::VhostDeviceVsock);
}

#[test]
fn a_killed_shim_is_reported_at_every_point_and_cleaned_up() {
    kill_at_every_point(Victim::Shim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the other (synchronous) tests of this file out
// while the pod runs; nothing else in this runtime takes it.
#[allow(clippy::await_holding_lock)]
async fn a_crashed_agent_panics_the_guest_kernel_which_is_reported_with_its_console() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let mut spec = rt.pod_spec("crash");
    spec.host_pid = true;
    let (mut client, pod) = rt.run_cri_pod(&spec).await;
    let dir = rt.pod_dirs().pop().expect("the pod directory");
    HullRuntime::check_backend(std::slice::from_ref(&dir));

    let sleeper = ContainerSpec::new("sleeper", BUSYBOX_IMAGE, &["sleep", "1000"]);
    let sleeper_id = client.run_container(&pod, &sleeper).await.expect("sleeper");
    let done = ContainerSpec::new("done", BUSYBOX_IMAGE, &["sh", "-c", "exit 3"]);
    let done_id = client.run_container(&pod, &done).await.expect("done");
    assert_eq!(
        client
            .wait_exited(&done_id, NOTICE)
            .await
            .expect("done exits"),
        3
    );
    let mut exec_client = CriClient::connect(rt.containerd.cri_socket()).await;
    let exec_id = sleeper_id.clone();
    let exec = tokio::spawn(async move {
        exec_client
            .exec_sync(&exec_id, &["sleep", "1000"], Duration::from_secs(600))
            .await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut crasher = ContainerSpec::new("crasher", BUSYBOX_IMAGE, &["sh", "-c", CRASH_PID_1]);
    crasher.add_capabilities = vec!["SYS_PTRACE".into()];
    client
        .run_container(&pod, &crasher)
        .await
        .unwrap_or_else(|status| {
            panic!(
                "crasher: {status:?}\nconsole:\n{}\ncontainerd's and the shim's log:\n{}",
                hull_tests::faults::last_lines(&dir.join("console.log"), 40),
                rt.containerd.log_tail(80)
            )
        });

    let code = client
        .wait_exited(&sleeper_id, NOTICE)
        .await
        .unwrap_or_else(|status| {
            panic!(
                "the sleeper still runs: {status:?}\ncrasher's log: {:?}\nconsole:\n{}",
                cri::read_log(&pod.log_file(&crasher.log_path())),
                hull_tests::faults::last_lines(&dir.join("console.log"), 40)
            )
        });
    assert_eq!(code, VM_GONE as i32);
    // The exec ends too, with an error or the lost process's status.
    let exec = tokio::time::timeout(NOTICE, exec)
        .await
        .expect("the exec to end")
        .expect("exec task");
    assert!(
        exec.as_ref().is_err() || exec.as_ref().is_ok_and(|out| out.exit_code != 0),
        "{exec:?}"
    );
    let status = client
        .container_status(&done_id)
        .await
        .expect("done status");
    assert_eq!(status.exit_code, 3, "{status:?}");

    // What the shim says: the panic, then the console lines up to it.
    let panic = "the guest kernel panicked (Kernel panic - not syncing: Attempted to kill init!";
    let log = cri::log_text(&pod.log_file(&sleeper.log_path()), "stderr");
    assert!(
        log.contains(&format!("hull: the pod's VM is gone: {panic}")),
        "{log}"
    );
    assert!(log.contains("last console lines:"), "{log}");
    let containerd_log = rt.containerd.log();
    assert!(
        containerd_log.contains(panic) && containerd_log.contains("exitcode=0x0000000b"),
        "{}",
        rt.containerd.log_tail(60)
    );

    client.stop_pod(&pod.id).await.expect("StopPodSandbox");
    // Four exits at once (the sandbox, two containers and the exec) on the
    // slow KVM test host can outlast containerd's time for handling one.
    client
        .remove_pod_within(&pod.id, NOTICE, &rt.containerd)
        .await;
    drop(client);
    assert_no_leftovers(&rt);
}

#[test]
fn the_faults_are_handled_with_the_hull_backend_in_the_kvm_test_host() {
    kvm_host::rerun_under_hull_vmm(
        // No vhost-device-vsock with hull-vmm.
        &[
            "a_killed_vmm_is_reported_at_every_point_and_cleaned_up",
            "a_killed_virtiofsd_is_reported_at_every_point_and_cleaned_up",
            "a_killed_shim_is_reported_at_every_point_and_cleaned_up",
            "a_crashed_agent_panics_the_guest_kernel_which_is_reported_with_its_console",
        ],
        Duration::from_secs(900),
    );
}
