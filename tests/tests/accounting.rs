//! Acceptance 5 of issue 16, "Accounting", through CRI on a real containerd
//! (QEMU TCG on this host, hull-vmm in the KVM test host): a pod whose cgroup
//! parent has a memory limit, as the kubelet's pod cgroup has,
//!
//! - has its shim, VMM and helpers inside that cgroup, in every hierarchy
//!   that accounts;
//! - is charged for the guest RAM its containers touch: the parent's usage
//!   grows by about what a container writes to a tmpfs in the guest;
//! - cannot push the pod past the limit: a container that fills more guest
//!   RAM than the limit leaves gets the VMM OOM-killed on the host, usage
//!   never passes the limit, and the pod then stops and goes cleanly, its
//!   cgroup with it.
//!
//! And acceptance 1 of issue 17, "Sizing": the VM is the size of the pod's
//! cgroup (less the RuntimeClass overhead), and a pod without limits gets
//! the configured defaults.

use std::time::{Duration, Instant};

use hull_tests::cri::ContainerSpec;
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::pod_cgroup::{KernelLog, ParentCgroup};
use hull_tests::{serial, unique_id};

const NS: &str = "hull-accounting";
const MIB: u64 = 1024 * 1024;
/// The VM's size: more than the limit leaves it once booted.
const VM_MEMORY_MIB: u64 = 1024;
/// The pod's memory limit: room for the boot (QEMU under TCG, its
/// translation cache, virtiofsd, vhost-device-vsock, the shim, the guest's
/// boot) and the first touch.
const LIMIT: u64 = 640 * MIB;
/// What the container touches first, and at least how much of it must show.
const FIRST_TOUCH_MIB: u64 = 100;
const FIRST_TOUCH_SEEN: u64 = 80 * MIB;
/// What it touches next: far past the limit.
const SECOND_TOUCH_MIB: u64 = 700;

fn alive(pid: i32) -> bool {
    hull_tests::containerd::process_state(pid).is_some_and(|state| state != 'Z')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the other tests of this binary out.
#[allow(clippy::await_holding_lock)]
async fn the_vm_is_charged_to_the_pod_and_held_to_its_memory_limit() {
    let _serial = serial();
    let rt =
        HullRuntime::start_with_config(NS, true, "enable_annotations = [\"io.hull.memory_mib\"]\n");
    let name = unique_id("hulltest");
    let parent = ParentCgroup::create(&name, LIMIT);
    let mut spec = rt.pod_spec("accounting");
    spec.cgroup_parent = format!("/{name}");
    spec.annotations = vec![("io.hull.memory_mib".into(), VM_MEMORY_MIB.to_string())];
    let (mut client, pod) = rt.run_cri_pod(&spec).await;
    // A tmpfs in the guest of the VM's size: what is written to it stays in
    // guest RAM.
    let mut filler = ContainerSpec::new(
        "filler",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "mount -t tmpfs -o size=1g fill /tmp && exec sleep 1000",
        ],
    );
    filler.add_capabilities = vec!["SYS_ADMIN".into()];
    let filler_id = client
        .run_container(&pod, &filler)
        .await
        .expect("the filler container");

    // The VMM, its helpers and the shim run in the pod's cgroup.
    let pod_dirs = rt.pod_dirs();
    HullRuntime::check_backend(&pod_dirs);
    let [pod_dir] = &pod_dirs[..] else {
        panic!("pod directories: {pod_dirs:?}");
    };
    let vm_processes = HullRuntime::vm_processes(pod_dir);
    assert!(
        vm_processes.len() >= 2,
        "the pids file names {vm_processes:?}"
    );
    for (what, pid) in &vm_processes {
        parent.assert_holds(what, *pid);
    }
    let shim: i32 = std::fs::read_to_string(pod_dir.join("shim.pid"))
        .expect("shim.pid")
        .trim()
        .parse()
        .expect("shim pid");
    parent.assert_holds("the shim", shim);
    let sandbox_cgroups = parent.children();
    assert!(!sandbox_cgroups.is_empty(), "no sandbox cgroup");

    // Guest RAM touched is charged to the pod.
    let before = parent.usage();
    let touch = client
        .exec_sync(
            &filler_id,
            &[
                "dd",
                "if=/dev/zero",
                "of=/tmp/first",
                "bs=1M",
                &format!("count={FIRST_TOUCH_MIB}"),
            ],
            Duration::from_secs(300),
        )
        .await
        .expect("the first touch");
    assert_eq!(touch.exit_code, 0, "dd: {}", touch.stderr);
    let after = parent.usage();
    eprintln!(
        "pod cgroup usage: {} MiB after boot, {} MiB after the guest touched {FIRST_TOUCH_MIB} MiB",
        before / MIB,
        after / MIB
    );
    assert!(
        after >= before + FIRST_TOUCH_SEEN,
        "the pod's usage went from {before} to {after} bytes after the guest touched {FIRST_TOUCH_MIB} MiB"
    );
    assert!(after <= LIMIT, "{after} bytes is past the limit {LIMIT}");

    // Touching far more than the limit leaves: the VMM, not the host, pays.
    let vmm_pid = vm_processes[0].1;
    let mut kernel_log = KernelLog::from_now();
    let mut flood = client.clone();
    let flood_id = filler_id.clone();
    let flood = tokio::spawn(async move {
        flood
            .exec_sync(
                &flood_id,
                &[
                    "dd",
                    "if=/dev/zero",
                    "of=/tmp/second",
                    "bs=1M",
                    &format!("count={SECOND_TOUCH_MIB}"),
                ],
                Duration::from_secs(600),
            )
            .await
    });
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while alive(vmm_pid) {
        let usage = parent.usage();
        most = most.max(usage);
        assert!(usage <= LIMIT, "{usage} bytes is past the limit {LIMIT}");
        assert!(
            Instant::now() < deadline,
            "the VMM still runs after the guest touched {SECOND_TOUCH_MIB} MiB more (usage at most {most} bytes; the touch: {:?})",
            flood.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(peak) = parent.peak() {
        assert!(
            peak <= LIMIT,
            "the pod's usage peaked at {peak}, past {LIMIT}"
        );
        most = most.max(peak);
    }
    let oom_kills = parent.oom_kills();
    let logged = kernel_log.oom_killed(vmm_pid);
    eprintln!(
        "the VMM is gone at a usage of at most {} MiB of {} MiB; OOM kills: {oom_kills}; the kernel log names it: {logged}",
        most / MIB,
        LIMIT / MIB
    );
    assert!(
        oom_kills >= 1 || logged,
        "the VMM (pid {vmm_pid}) went, but not by the OOM killer: neither the cgroup's counter nor the kernel log has its kill; containerd's and the shim's log:\n{}",
        rt.containerd.log_tail(80)
    );
    let touched = flood.await.expect("the flood task");
    assert!(
        !matches!(&touched, Ok(output) if output.exit_code == 0),
        "the guest touched {SECOND_TOUCH_MIB} MiB more past the limit: {touched:?}"
    );

    // The pod then fails and goes cleanly, its cgroup with it.
    client
        .wait_exited(&filler_id, Duration::from_secs(60))
        .await
        .expect("the filler exits with its VM");
    client.stop_pod(&pod.id).await.expect("StopPodSandbox");
    client
        .remove_pod_within(&pod.id, Duration::from_secs(120), &rt.containerd)
        .await;
    drop(client);
    // More than the 30 s after which a shim whose last Delete got no
    // Shutdown exits by itself: containerd 1.6 sends none when its 10 s for
    // the exit ran out, which the slow KVM test host sees.
    let left = rt.leftovers(Duration::from_secs(45));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !parent.children().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        parent.children().is_empty(),
        "the sandbox's cgroup is left: {:?}",
        parent.children()
    );
}

/// The guest's CPUs and MemTotal (KiB), seen from a container.
async fn guest_size(
    client: &mut hull_tests::cri::CriClient,
    pod: &hull_tests::cri::Pod,
) -> (u32, u64) {
    let sleeper = ContainerSpec::new("sizes", BUSYBOX_IMAGE, &["sleep", "1000"]);
    let id = client
        .run_container(pod, &sleeper)
        .await
        .expect("the container");
    let seen = client
        .exec_sync(
            &id,
            &["sh", "-c", "nproc; head -n 1 /proc/meminfo"],
            Duration::from_secs(120),
        )
        .await
        .expect("ExecSync");
    assert_eq!(seen.exit_code, 0, "{seen:?}");
    let mut words = seen.stdout.split_whitespace();
    let cpus = words.next().and_then(|w| w.parse().ok());
    let kib = words.nth(1).and_then(|w| w.parse().ok());
    match (cpus, kib) {
        (Some(cpus), Some(kib)) => (cpus, kib),
        _ => panic!("nproc and MemTotal: {:?}", seen.stdout),
    }
}

/// The RuntimeClass overhead the sizing test's config declares.
const OVERHEAD_MIB: u64 = 128;

/// What the guest kernel keeps for itself of the VM's memory, at most.
const KERNEL_KEEPS_KIB: u64 = 64 * 1024;

/// Runs a pod below the cgroup `/name` with a RuntimeClass overhead of
/// [`OVERHEAD_MIB`] and 250m configured, and removes it; answers the CPUs
/// and MemTotal (KiB) its guest saw.
async fn sized_pod(what: &str, name: &str) -> (u32, u64) {
    let rt = HullRuntime::start_with_config(
        NS,
        true,
        &format!("pod_overhead_memory_mib = {OVERHEAD_MIB}\npod_overhead_cpu_millis = 250\n"),
    );
    let mut spec = rt.pod_spec(what);
    spec.cgroup_parent = format!("/{name}");
    let (mut client, pod) = rt.run_cri_pod(&spec).await;
    let (cpus, mem_kib) = guest_size(&mut client, &pod).await;
    eprintln!("{what} pod: {cpus} CPUs, MemTotal {mem_kib} kB");
    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
    (cpus, mem_kib)
}

fn assert_vm_memory(what: &str, mem_kib: u64, vm_mib: u64) {
    assert!(
        (vm_mib * 1024 - KERNEL_KEEPS_KIB..=vm_mib * 1024).contains(&mem_kib),
        "{what}: MemTotal {mem_kib} kB in a VM that should have {vm_mib} MiB"
    );
}

/// A pod cgroup of 1 GiB and 2 CPUs gives 2 vCPUs (no more than the host
/// has, though: the KVM test host has one, as one with two wedged running
/// this test) and 1 GiB less the overhead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn the_vm_is_sized_from_the_pods_cgroup() {
    let _serial = serial();
    let name = unique_id("hullsize");
    let parent = ParentCgroup::create(&name, 1024 * MIB);
    parent.set_cpu_limit(2000);
    let (cpus, mem_kib) = sized_pod("limited", &name).await;
    drop(parent);
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    assert_eq!(cpus, 2.min(host_cpus), "CPUs in the guest");
    assert_vm_memory("limited", mem_kib, 1024 - OVERHEAD_MIB);
}

/// A pod cgroup without limits, as a BestEffort pod's, gives the defaults
/// (the harness's 256 MiB and 1 vCPU).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn a_pod_without_limits_gets_the_default_size() {
    let _serial = serial();
    let name = unique_id("hullsize");
    let parent = ParentCgroup::without_limits(&name);
    let (cpus, mem_kib) = sized_pod("unlimited", &name).await;
    drop(parent);
    assert_eq!(cpus, 1, "CPUs in the guest");
    assert_vm_memory(
        "unlimited",
        mem_kib,
        u64::from(hull_tests::hull_runtime::TEST_MEMORY_MIB),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn a_bad_cgroup_parent_fails_the_pod_naming_the_field() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let mut spec = rt.pod_spec("bad-cgroup");
    // containerd joins it with the sandbox id: a relative cgroupfs path.
    spec.cgroup_parent = "relative/parent".into();
    let mut client = hull_tests::cri::CriClient::connect(rt.containerd.cri_socket()).await;
    client.wait_for_test_images().await;
    let err = client
        .run_pod(&spec)
        .await
        .expect_err("a pod with a relative cgroups path");
    assert!(
        err.message()
            .contains("linux.cgroupsPath: \"relative/parent/"),
        "{err:?}"
    );
    let left = rt.leftovers(Duration::from_secs(20));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

#[test]
fn the_vm_is_charged_to_and_sized_from_the_pod_under_hull_vmm_in_the_kvm_test_host() {
    hull_tests::kvm_host::rerun_under_hull_vmm(
        &[
            "the_vm_is_charged_to_the_pod_and_held_to_its_memory_limit",
            "the_vm_is_sized_from_the_pods_cgroup",
        ],
        Duration::from_secs(1500),
    );
}
