//! The `hull` backend end to end, inside the KVM test host (this machine
//! has no hardware virtualization of its own): hull-vmm boots the guest
//! image, the agent answers over hybrid vsock, a container whose rootfs comes
//! over virtio-fs runs and returns output, the boot timeline is reported,
//! pause and resume work, and stopping leaves nothing behind.
//!
//! The outer test boots the test host and runs this same test binary in it,
//! filtered to the inner test, which is ignored everywhere else.

use std::path::Path;
use std::time::Duration;

use hull_hypervisor::BackendKind;
use hull_proto::v1 as api;
use hull_tests::agent::AgentUnderTest;
use hull_tests::vm::{TestVm, backend};
use hull_tests::{kvm_host, spec, unique_id};

/// Set in the test host, so the inner test knows where it runs.
const INSIDE: &str = "HULL_INSIDE_KVM_TEST_HOST";

#[test]
fn the_hull_backend_runs_a_container_in_the_kvm_test_host() {
    let output = kvm_host::rerun_tests(kvm_host::Rerun {
        tests: &["inside_the_kvm_test_host"],
        env: &format!("{INSIDE}=1"),
        include_ignored: true,
        tmpfs_tmp: false,
        memory_mib: 2048,
        vcpus: 1,
        timeout: Duration::from_secs(600),
    });
    assert!(output.contains("hello from a hull-vmm guest"), "{output}");
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
#[ignore = "runs inside the KVM test host, started by the_hull_backend_runs_a_container_in_the_kvm_test_host"]
async fn inside_the_kvm_test_host() {
    assert!(
        std::env::var_os(INSIDE).is_some(),
        "this test needs hardware KVM: it runs inside the KVM test host"
    );
    // Hardware KVM here, so the default backend is hull-vmm.
    let backend = backend(BackendKind::Auto);
    assert_eq!(backend.name(), "hull");
    // Two vCPUs: the guest finds the second one through the MP table.
    let mut vm = TestVm::boot_with(backend, 2).await;
    assert_eq!(vm.vm().vmm_name(), "hull-vmm");
    // Jailed, without capabilities, under its filter; virtiofsd sandboxed.
    hull_tests::confinement::assert_helpers_confined(vm.vm(), &vm.config.shared_dir);

    // The boot timeline: VMM start, kernel entry, agent ready.
    let timeline = vm.vm().timeline();
    println!("boot timeline: {timeline}");
    let entry = timeline.kernel_entry.expect("kernel entry");
    let ready = timeline.agent_ready.expect("agent ready");
    assert!(entry < ready, "{timeline}");
    // The serial console reaches the log, through hull-vmm's stdout.
    assert!(timeline.first_console_line.is_some(), "{timeline}");
    assert!(vm.log().contains("Linux version"), "console:\n{}", vm.log());

    // The agent answers over hybrid vsock, as PID 1 of the guest's own kernel.
    assert_eq!(vm.health().await.api_version, api::API_VERSION);
    let details = vm.guest_details().await;
    assert!(details.pid1, "{details:?}");

    // A container whose rootfs comes over virtio-fs.
    let id = unique_id("hello");
    let hello = vm
        .run_container(
            &id,
            &spec::simple(&[
                "sh",
                "-c",
                "echo hello from a hull-vmm guest; uname -r; grep -c ^processor /proc/cpuinfo",
            ]),
        )
        .await;
    let host_release = nix::sys::utsname::uname().expect("uname");
    let output = hello.stdout_text();
    print!("{output}");
    assert_eq!(hello.wait.exit_status, 0, "console:\n{}", vm.log());
    assert!(
        output.starts_with("hello from a hull-vmm guest\n"),
        "{output}"
    );
    assert!(output.contains(&details.kernel_release), "{output}");
    assert_ne!(
        output.lines().nth(1).unwrap_or_default(),
        host_release.release().to_string_lossy(),
        "the container ran on the test host's kernel"
    );
    assert_eq!(output.lines().nth(2), Some("2"), "CPUs online: {output}");
    vm.remove(&id, false).await.expect("remove");

    // A write from the guest lands in the shared directory on the host.
    let id = unique_id("write");
    let wrote = vm
        .run_container(
            &id,
            &spec::simple(&["sh", "-c", "echo through virtio-fs > /shared-note"]),
        )
        .await;
    assert_eq!(wrote.wait.exit_status, 0);
    let note = vm.host_path(&format!("{id}/rootfs/shared-note"));
    assert_eq!(
        std::fs::read_to_string(&note).expect("the note"),
        "through virtio-fs\n"
    );
    vm.remove(&id, false).await.expect("remove");

    // Pause takes the vCPUs out of the guest: the agent cannot answer until
    // resumed.
    vm.vm().pause().expect("pause");
    assert_eq!(
        vm.vm().run_state().expect("state"),
        hull_vmm::RunState::Paused
    );
    let stalled = tokio::time::timeout(
        Duration::from_secs(2),
        vm.client.health(api::HealthRequest {}),
    )
    .await;
    assert!(stalled.is_err(), "a paused guest answered");
    vm.vm().resume().expect("resume");
    assert_eq!(vm.health().await.api_version, api::API_VERSION);

    // Stopping: the guest powers itself off, and the VMM, virtiofsd, the
    // sockets and the work directory all go.
    let pids = vm.vm().pids();
    let work_dir = vm.vm().work_dir().to_owned();
    assert!(work_dir.join("vsock.uds").exists());
    assert!(vm.shutdown().await, "the guest did not power off by itself");
    for (name, pid) in pids {
        assert!(!process_alive(pid), "{name} ({pid}) survived");
    }
    assert!(
        !Path::new(&work_dir).exists(),
        "{} is left",
        work_dir.display()
    );
}
