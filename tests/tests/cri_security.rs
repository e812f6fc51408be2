//! Security options a CRI container asks for are applied in the guest as
//! runc applies them on a host (issue 17, acceptance 5). Runs under QEMU
//! TCG here.

use std::time::Duration;

use hull_tests::cri::{ContainerSpec, CriClient, Pod};
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::{serial, unique_id};
use k8s_cri::v1 as cri;
use k8s_cri::v1::security_profile::ProfileType;

const NS: &str = "hull-security";
const EXEC: Duration = Duration::from_secs(60);

/// The `Seccomp:` mode of the container's first process, then of the
/// exec'd process that reads it (0 none, 2 filter).
const SECCOMP_MODES: &str = "grep Seccomp: /proc/1/status; grep Seccomp: /proc/self/status";

/// Runs a `sleep` container with `seccomp` in `pod`; answers its id.
async fn sleeper(
    client: &mut CriClient,
    pod: &Pod,
    name: &str,
    seccomp: Option<cri::SecurityProfile>,
) -> String {
    let spec = ContainerSpec {
        seccomp,
        ..ContainerSpec::new(name, BUSYBOX_IMAGE, &["sleep", "1000"])
    };
    client
        .run_container(pod, &spec)
        .await
        .unwrap_or_else(|err| panic!("container {name}: {err}"))
}

/// ExecSync `script` under `sh -c`; answers its exit code and output.
async fn exec(client: &mut CriClient, id: &str, script: &str) -> (i32, String) {
    let output = client
        .exec_sync(id, &["sh", "-c", script], EXEC)
        .await
        .unwrap_or_else(|err| panic!("ExecSync {script:?}: {err}"));
    (
        output.exit_code,
        format!("{}{}", output.stdout, output.stderr).replace('\t', " "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the other tests of this file out.
#[allow(clippy::await_holding_lock)]
async fn seccomp_profiles_apply_to_exec_processes_as_to_the_first() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let (mut client, pod) = rt.run_cri_pod(&rt.pod_spec(&unique_id("seccomp"))).await;

    // runtime/default: both processes filtered.
    let default = sleeper(
        &mut client,
        &pod,
        "default",
        Some(cri::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        exec(&mut client, &default, SECCOMP_MODES).await,
        (0, "Seccomp: 2\nSeccomp: 2\n".to_owned())
    );

    // A localhost profile that denies chmod: an exec cannot chmod.
    let dir = tempfile::tempdir().expect("profile dir");
    let profile = dir.path().join("no-chmod.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["chmod", "fchmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("write the profile");
    let no_chmod = sleeper(
        &mut client,
        &pod,
        "no-chmod",
        Some(cri::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: profile.display().to_string(),
        }),
    )
    .await;
    let (code, output) = exec(&mut client, &no_chmod, "touch /tmp/f && chmod 400 /tmp/f").await;
    assert_ne!(code, 0, "chmod succeeded under a profile that denies it");
    assert!(output.contains("Operation not permitted"), "{output}");

    // Unconfined, as with runc: neither is filtered, and chmod works.
    let unconfined = sleeper(
        &mut client,
        &pod,
        "unconfined",
        Some(cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        exec(&mut client, &unconfined, SECCOMP_MODES).await,
        (0, "Seccomp: 0\nSeccomp: 0\n".to_owned())
    );
    assert_eq!(
        exec(&mut client, &unconfined, "touch /tmp/f && chmod 400 /tmp/f").await,
        (0, String::new())
    );
    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
}

/// The pod's sysctls show in `/proc/sys` of its containers, as with runc:
/// Kubernetes' safe ones (`kernel.shm_rmid_forced`, which lives in the IPC
/// namespace, and `net.ipv4.ip_unprivileged_port_start`, in the network
/// one) and an unsafe one the node allowed (`fs.mqueue.msg_max`, IPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn pod_sysctls_show_in_proc_sys() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let sysctls = [
        ("kernel.shm_rmid_forced", "1"),
        ("net.ipv4.ip_unprivileged_port_start", "500"),
        ("fs.mqueue.msg_max", "77"),
    ];
    let mut spec = rt.pod_spec(&unique_id("sysctls"));
    spec.sysctls = sysctls
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    let (mut client, pod) = rt.run_cri_pod(&spec).await;
    let id = sleeper(&mut client, &pod, "reader", None).await;
    for (key, value) in sysctls {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let (code, output) = exec(&mut client, &id, &format!("cat {path}")).await;
        assert_eq!((code, output.trim()), (0, value), "{key} in the container");
    }
    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
}
