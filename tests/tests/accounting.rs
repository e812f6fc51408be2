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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_hypervisor::cgroup::{Hierarchy, host_hierarchies};
use hull_tests::cri::ContainerSpec;
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
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

/// The pod's parent cgroup, made as the kubelet makes a pod's: in every
/// hierarchy that accounts, with a memory limit. Removed when dropped.
struct ParentCgroup {
    name: String,
    hierarchies: Vec<Hierarchy>,
    /// Where the memory controller is: the v1 memory hierarchy, or v2's.
    memory: PathBuf,
    v2: bool,
}

impl ParentCgroup {
    fn create(name: &str, limit: u64) -> Self {
        let hierarchies = host_hierarchies().expect("cgroup hierarchies");
        let mut memory = None;
        let mut v2 = false;
        for hierarchy in &hierarchies {
            let dir = hierarchy.root.join(name);
            if hierarchy.controllers.is_empty() {
                // v2: the root must hand the memory controller down.
                std::fs::write(hierarchy.root.join("cgroup.subtree_control"), "+memory")
                    .expect("enabling the v2 memory controller");
                v2 = true;
            }
            std::fs::create_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
            if hierarchy.controllers.iter().any(|c| c == "cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = std::fs::read_to_string(hierarchy.root.join(file)).expect(file);
                    std::fs::write(dir.join(file), parent.trim()).expect(file);
                }
            }
            if hierarchy.controllers.is_empty()
                || hierarchy.controllers.iter().any(|c| c == "memory")
            {
                memory = Some(dir);
            }
        }
        let parent = Self {
            name: name.to_owned(),
            hierarchies,
            memory: memory.expect("a hierarchy with the memory controller"),
            v2,
        };
        parent.set_limit(limit);
        parent
    }

    fn set_limit(&self, bytes: u64) {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(self.memory.join(file), bytes.to_string()).expect(file);
    }

    fn read(&self, file: &str) -> u64 {
        std::fs::read_to_string(self.memory.join(file))
            .unwrap_or_else(|err| panic!("{file}: {err}"))
            .trim()
            .parse()
            .unwrap_or_else(|err| panic!("{file}: {err}"))
    }

    fn usage(&self) -> u64 {
        self.read(if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        })
    }

    /// The most the cgroup ever used, where the kernel keeps it.
    fn peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.memory.join(file).exists().then(|| self.read(file))
    }

    /// How many processes the kernel's OOM killer took in it. v2 counts
    /// the whole subtree in `memory.events`; v1 counts a kill in the
    /// victim's own cgroup (the sandbox's, below), so those are added.
    fn oom_kills(&self) -> u64 {
        let count = |dir: &Path, file: &str| -> u64 {
            std::fs::read_to_string(dir.join(file))
                .unwrap_or_default()
                .lines()
                .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
                .unwrap_or(0)
        };
        if self.v2 {
            return count(&self.memory, "memory.events");
        }
        let below: u64 = std::fs::read_dir(&self.memory)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .map(|entry| count(&entry.path(), "memory.oom_control"))
            .sum();
        count(&self.memory, "memory.oom_control") + below
    }

    /// Directories below it: the sandbox's cgroup while the pod runs.
    fn children(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .flat_map(|h| {
                std::fs::read_dir(h.root.join(&self.name))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|entry| entry.path().is_dir())
                    .map(|entry| entry.path())
            })
            .collect()
    }

    /// Fails unless process `pid` is in a cgroup below this one in every
    /// hierarchy.
    fn assert_holds(&self, what: &str, pid: i32) {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_else(|err| panic!("{what} (pid {pid}): {err}"));
        for hierarchy in &self.hierarchies {
            let parent = hierarchy.root.join(&self.name);
            let cgroup = hierarchy.cgroup_of(&cgroups);
            assert!(
                cgroup
                    .as_deref()
                    .is_some_and(|dir| dir.starts_with(&parent) && dir != parent),
                "{what} (pid {pid}) is in {cgroup:?}, not below the pod's cgroup {}:\n{cgroups}",
                parent.display()
            );
        }
    }
}

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        for hierarchy in &self.hierarchies {
            let dir = hierarchy.root.join(&self.name);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                // What the shim left (the test fails on it elsewhere).
                for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if child.path().is_dir() {
                        kill_in(&child.path());
                        let _ = std::fs::remove_dir(child.path());
                    }
                }
                kill_in(&dir);
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
                    Err(err) if Instant::now() >= deadline => {
                        eprintln!("removing {}: {err}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

fn kill_in(dir: &Path) {
    let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    hull_tests::containerd::kill_all(&pids);
}

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
    eprintln!(
        "the VMM is gone at a usage of at most {} MiB of {} MiB; OOM kills: {oom_kills}",
        most / MIB,
        LIMIT / MIB
    );
    assert!(oom_kills >= 1, "the VMM went, but not by the OOM killer");
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
fn the_vm_is_charged_to_the_pod_under_hull_vmm_in_the_kvm_test_host() {
    hull_tests::kvm_host::rerun_under_hull_vmm(
        &["the_vm_is_charged_to_the_pod_and_held_to_its_memory_limit"],
        Duration::from_secs(1200),
    );
}
