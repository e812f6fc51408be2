//! A guest that never answers (issue 16, acceptance 2): the test guest's
//! agent is built with its `test-hang` feature and told by the sandbox
//! policy (`hang_rpcs`) never to answer SignalProcess, RemoveContainer and
//! DestroySandbox. Then:
//! - `ctr task kill`, `ctr task delete` and `ctr container delete` each
//!   return within 30 s;
//! - CRI StopPodSandbox and RemovePodSandbox each return within 30 s;
//! - State of another container of the pod answers while a call hangs;
//! - the VM's processes (the pod directory's `pids`) are gone within 60 s.
//!
//! The shim gives each agent call a deadline; when Kill or Shutdown miss
//! theirs it kills the VM, and every process of the pod exits with 255; a
//! Delete gives up its RemoveContainer and ends. Runs under QEMU TCG here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hull_tests::cri::ContainerSpec;
use hull_tests::faults::poll;
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::{serial, unique_id};

const NS: &str = "hull-hung";
/// How long each call a kubelet or a user makes may take.
const ANSWER: Duration = Duration::from_secs(30);
/// How long the VM's processes may outlive the pod's teardown.
const GONE: Duration = Duration::from_secs(60);
/// Under TCG on a busy host a boot takes tens of seconds.
const BOOT: Duration = Duration::from_secs(180);
/// State answers from the shim's memory: well under this, which is under
/// the shim's 8 s deadline for the call that hangs.
const STATE: Duration = Duration::from_secs(3);
/// The exit status the shim gives a process whose VM it killed.
const VM_GONE: i32 = 255;

/// A runtime whose pods run the test-hang guest, with an agent policy
/// that never answers `hang`.
fn runtime(cri: bool, hang: &[&str]) -> (HullRuntime, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("policy dir");
    let policy = dir.path().join("policy.toml");
    let names: Vec<String> = hang.iter().map(|rpc| format!("{rpc:?}")).collect();
    std::fs::write(&policy, format!("hang_rpcs = [{}]\n", names.join(", "))).expect("policy");
    let rt = HullRuntime::start_with_guest(
        NS,
        cri,
        &format!("agent_policy_file = {policy:?}\n"),
        hull_tests::vm::hang_guest_image(),
    );
    (rt, dir)
}

/// The pid of every VM process the pod directories list.
fn vm_pids(rt: &HullRuntime) -> Vec<(PathBuf, String, i32)> {
    rt.pod_dirs()
        .into_iter()
        .flat_map(|dir| {
            HullRuntime::vm_processes(&dir)
                .into_iter()
                .map(move |(name, pid)| (dir.clone(), name, pid))
        })
        .collect()
}

/// Waits up to [`GONE`] for each of `pids` to be gone (or a zombie).
fn assert_gone(rt: &HullRuntime, pids: &[(PathBuf, String, i32)]) {
    assert!(!pids.is_empty(), "the pod listed no VM process");
    for (_, name, pid) in pids {
        poll(&format!("{name} (pid {pid}) to exit"), GONE, || {
            hull_tests::containerd::process_state(*pid)
                .is_none_or(|state| state == 'Z')
                .then_some(())
        });
    }
    let left = rt.leftovers(GONE);
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// Runs `ctr ARGS` in the test namespace, which must succeed within
/// [`ANSWER`] (`ctr_with_timeout` panics otherwise); returns how long.
fn ctr_within(rt: &HullRuntime, args: &[&str]) -> Duration {
    let mut full = vec!["-n", NS];
    full.extend_from_slice(args);
    let started = Instant::now();
    let output = rt.containerd.ctr_with_timeout(&full, ANSWER);
    rt.containerd
        .expect_success(&format!("ctr {full:?}"), output);
    started.elapsed()
}

#[test]
fn ctr_kill_and_delete_end_when_the_guest_never_answers() {
    let _serial = serial();
    let (rt, _policy) = runtime(
        false,
        &["SignalProcess", "RemoveContainer", "DestroySandbox"],
    );
    let id = unique_id("hung");
    rt.run_ok(&["-d", BUSYBOX_IMAGE, &id, "sleep", "1000"]);
    let pids = vm_pids(&rt);
    assert_eq!(rt.task_status(&id).as_deref(), Some("RUNNING"));

    // SignalProcess never answers: the shim kills the VM instead.
    let took = ctr_within(&rt, &["task", "kill", "-s", "SIGKILL", &id]);
    eprintln!("ctr task kill took {took:?}");
    rt.wait_stopped(&id, ANSWER);
    let status = rt.containerd.ctr_ok(&["-n", NS, "task", "ls"]);
    assert!(
        status
            .lines()
            .any(|line| line.starts_with(&id) && line.contains("STOPPED")),
        "{status}"
    );
    let took = ctr_within(&rt, &["task", "delete", &id]);
    eprintln!("ctr task delete took {took:?}");
    let took = ctr_within(&rt, &["container", "delete", &id]);
    eprintln!("ctr container delete took {took:?}");
    assert_gone(&rt, &pids);
    let log = rt.containerd.log_tail(400);
    assert!(
        log.contains("the agent did not answer SignalProcess"),
        "the shim's log does not say why the VM was killed:\n{log}"
    );
}

#[test]
fn a_task_delete_ends_when_the_guest_never_answers_the_sandbox_teardown() {
    let _serial = serial();
    // RemoveContainer answers, DestroySandbox does not.
    let (rt, _policy) = runtime(false, &["DestroySandbox"]);
    let id = unique_id("hung");
    rt.run_ok(&["-d", BUSYBOX_IMAGE, &id, "sh", "-c", "sleep 1"]);
    let pids = vm_pids(&rt);
    rt.wait_stopped(&id, BOOT);
    ctr_within(&rt, &["task", "delete", &id]);
    ctr_within(&rt, &["container", "delete", &id]);
    assert_gone(&rt, &pids);
}

#[test]
fn cri_pod_teardown_ends_and_state_answers_when_the_guest_never_answers() {
    let _serial = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(cri_pod_teardown());
}

async fn cri_pod_teardown() {
    let (rt, _policy) = runtime(
        true,
        &["SignalProcess", "RemoveContainer", "DestroySandbox"],
    );
    let spec = rt.pod_spec(&unique_id("hung"));
    let (mut client, pod) = rt.run_cri_pod(&spec).await;
    let pids = vm_pids(&rt);
    let sleeper = client
        .run_container(
            &pod,
            &ContainerSpec::new("sleeper", BUSYBOX_IMAGE, &["sleep", "1000"]),
        )
        .await
        .expect("the sleeper runs");
    // Its exit makes CRI delete its task at once: RemoveContainer hangs.
    let quitter = client
        .run_container(
            &pod,
            &ContainerSpec::new("quitter", BUSYBOX_IMAGE, &["true"]),
        )
        .await
        .expect("the quitter runs");

    // CRI deletes the quitter's task at once; the shim says so in its log
    // just before the RemoveContainer call that hangs. While it hangs (the
    // shim gives it 8 s, then the Delete ends without it), State of the sleeper,
    // asked straight on the shim's socket, answers that it runs. Through
    // `ctr task ls` the time would be mostly ctr's start and containerd's,
    // which in the KVM test host came close to those 8 s.
    let removing = format!("removing the container in the guest task={quitter}");
    // Every 200 ms: the debug log is megabytes, slow to read in the KVM
    // test host.
    let waiting = Instant::now();
    while !rt.containerd.log().contains(&removing) {
        assert!(
            waiting.elapsed() < BOOT,
            "the quitter's task was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (took, status) = shim_state(&rt, &sleeper).await;
    assert!(took < STATE, "State of the sleeper took {took:?}");
    assert_eq!(
        status,
        containerd_shim::protos::api::Status::RUNNING,
        "State of the sleeper while the quitter's RemoveContainer hangs"
    );

    // StopPodSandbox begins while RemoveContainer hangs, and its Kill of
    // the sleeper meets the hung SignalProcess: the Kill's deadline kills
    // the VM, and CRI then sees the sleeper exit with 255.
    let started = Instant::now();
    let stopped = tokio::time::timeout(ANSWER, client.stop_pod(&pod.id)).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "StopPodSandbox: {stopped:?} after {:?}\ncontainerd log:\n{}",
        started.elapsed(),
        rt.containerd.log_tail(120)
    );
    eprintln!("StopPodSandbox took {:?}", started.elapsed());
    // The sleeper was lost with the VM the shim killed.
    let status = client
        .container_status(&sleeper)
        .await
        .expect("ContainerStatus");
    assert_eq!(status.exit_code, VM_GONE, "{status:?}");
    let started = Instant::now();
    let removed = tokio::time::timeout(ANSWER, client.remove_pod(&pod.id)).await;
    assert!(
        matches!(removed, Ok(Ok(()))),
        "RemovePodSandbox: {removed:?} after {:?}\ncontainerd log:\n{}",
        started.elapsed(),
        rt.containerd.log_tail(120)
    );
    eprintln!("RemovePodSandbox took {:?}", started.elapsed());
    assert_gone(&rt, &pids);
    let log = rt.containerd.log_tail(600);
    assert!(
        log.contains("the shim killed the VM"),
        "the shim's log does not say why the VM was killed:\n{log}"
    );
}

/// State of CRI task `id`, asked on the socket of its shim (the address
/// the shim wrote in the task's bundle): how long the answer took, and
/// the task's status.
async fn shim_state(
    rt: &HullRuntime,
    id: &str,
) -> (Duration, containerd_shim::protos::api::Status) {
    use containerd_shim::protos::api::StateRequest;
    use containerd_shim::protos::shim_async::{Client, TaskClient};
    use containerd_shim::protos::ttrpc::context;

    let bundle = rt
        .containerd
        .dir()
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(id);
    let address = std::fs::read_to_string(bundle.join("address")).expect("the shim's address");
    let client = Client::connect(address.trim())
        .await
        .expect("connect to the shim");
    let request = StateRequest {
        id: id.to_owned(),
        ..Default::default()
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(
        STATE * 2,
        TaskClient::new(client).state(context::with_timeout(STATE.as_nanos() as i64 * 2), &request),
    )
    .await;
    let took = started.elapsed();
    let state = answer
        .unwrap_or_else(|_| panic!("State of {id} got no answer in {:?}", STATE * 2))
        .unwrap_or_else(|err| panic!("State of {id}: {err}"));
    (took, state.status.enum_value_or_default())
}

#[test]
fn a_hung_agent_cannot_wedge_a_pod_under_hull_vmm_in_the_kvm_test_host() {
    // Two vCPUs: with one, the dying VMM's teardown, containerd, the shim
    // and the commands containerd runs took turns on it, and containerd's
    // own 2 s State and 10 s exit-handling timeouts ran out while they
    // waited (StopPodSandbox took 20 s, and over 30 s, where two vCPUs
    // gave 13 s). The other suites keep one for now: in the one full run
    // with two, one boot of the faults suite's saw the guest answer no
    // vsock connection request after its ready call (cause not found yet).
    hull_tests::kvm_host::rerun_under_hull_vmm_with_vcpus(
        &[
            "ctr_kill_and_delete_end_when_the_guest_never_answers",
            "a_task_delete_ends_when_the_guest_never_answers_the_sandbox_teardown",
            "cri_pod_teardown_ends_and_state_answers_when_the_guest_never_answers",
        ],
        2,
        Duration::from_secs(900),
    );
}
