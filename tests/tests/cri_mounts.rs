//! CRI volumes with more than a plain bind to them (issue 17), under QEMU
//! TCG here:
//! - mount propagation (acceptance 5): Bidirectional (`rshared`) and
//!   HostToContainer (`rslave`) volumes start, and what a container mounts
//!   below a Bidirectional volume shows in the pod's other containers that
//!   mount the same volume with propagation: not in a private mount of it,
//!   not back from a HostToContainer one, and never on the host
//!   (docs/DESIGN.md, "Mount propagation");
//! - /dev/shm (acceptance 4): containerd's sandbox shm and a Memory-medium
//!   emptyDir mounted there are each one tmpfs of the pod in the guest, of
//!   the host tmpfs's size, shared by the pod's containers that bind it.

use std::path::Path;
use std::process::Command;

use hull_tests::cri::v1::MountPropagation;
use hull_tests::cri::{BindMount, ContainerSpec, CriClient};
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::{serial, unique_id};

const NS: &str = "hull-mounts";

fn mount(args: &[&str]) {
    let status = Command::new("mount").args(args).status().expect("mount");
    assert!(status.success(), "mount {args:?}");
}

/// A host directory on a shared mount of its own: containerd refuses a
/// Bidirectional volume whose source is not on a shared mount, as the
/// kubelet's hosts provide.
struct SharedSource(tempfile::TempDir);

impl SharedSource {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("volume");
        let path = dir.path().to_str().expect("utf-8");
        mount(&["--bind", path, path]);
        mount(&["--make-shared", path]);
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SharedSource {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// A tmpfs of `size` on a host directory, as the kubelet mounts a
/// Memory-medium emptyDir with a sizeLimit.
struct HostTmpfs(tempfile::TempDir);

impl HostTmpfs {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("emptyDir");
        let path = dir.path().to_str().expect("utf-8");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "emptydir",
            path,
        ]);
        Self(dir)
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// The size of /dev/shm in the container, in KiB, from busybox's df.
async fn shm_kib(client: &mut CriClient, id: &str) -> u64 {
    let df = client.sh(id, "df -k /dev/shm | tail -n 1").await;
    df.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("df of /dev/shm: {df:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn dev_shm_is_a_tmpfs_of_the_pod_sized_by_its_source_and_shared() {
    let _serial = serial();
    let empty_dir = HostTmpfs::new("40m");
    let rt = HullRuntime::start(NS, true);
    let (mut client, pod) = rt.run_cri_pod(&rt.pod_spec(&unique_id("shm"))).await;
    let mut ids = Vec::new();
    for (name, with_empty_dir) in [
        ("writer", true),
        ("reader", true),
        ("plain", false),
        ("plain2", false),
    ] {
        let mut spec = ContainerSpec::new(name, BUSYBOX_IMAGE, &["sleep", "3600"]);
        if with_empty_dir {
            spec.mounts = vec![BindMount {
                host_path: empty_dir.0.path().to_owned(),
                container_path: "/dev/shm".into(),
                ..Default::default()
            }];
        }
        ids.push(
            client
                .run_container(&pod, &spec)
                .await
                .unwrap_or_else(|err| panic!("container {name}: {err}")),
        );
    }
    let [writer, reader, plain, plain2] = &ids[..] else {
        unreachable!("four containers")
    };
    // The emptyDir's size, then containerd's 64 MiB sandbox shm.
    assert_eq!(shm_kib(&mut client, writer).await, 40 * 1024);
    assert_eq!(shm_kib(&mut client, reader).await, 40 * 1024);
    assert_eq!(shm_kib(&mut client, plain).await, 64 * 1024);
    // Shared by the containers that bind the same source, and only them.
    client.sh(writer, "echo from-writer > /dev/shm/note").await;
    client.sh(plain, "echo from-plain > /dev/shm/note").await;
    assert_eq!(
        client.sh(reader, "cat /dev/shm/note").await,
        "from-writer\n"
    );
    assert_eq!(client.sh(plain2, "cat /dev/shm/note").await, "from-plain\n");
    // Guest memory, not the host's tmpfs.
    assert!(!empty_dir.0.path().join("note").exists());

    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn rshared_and_rslave_volumes_start_and_their_mounts_propagate_within_the_pod() {
    let _serial = serial();
    let volume = SharedSource::new();
    let rt = HullRuntime::start(NS, true);
    let (mut client, pod) = rt
        .run_cri_pod(&rt.pod_spec(&unique_id("propagation")))
        .await;
    let container = |name: &str, propagation| {
        let mut spec = ContainerSpec::new(name, BUSYBOX_IMAGE, &["sleep", "3600"]);
        spec.mounts = vec![BindMount {
            host_path: volume.path().to_owned(),
            container_path: "/vol".into(),
            readonly: false,
            propagation,
        }];
        spec.add_capabilities = vec!["SYS_ADMIN".into()];
        spec
    };
    let mut ids = Vec::new();
    for (name, propagation) in [
        ("source", MountPropagation::PropagationBidirectional),
        ("receiver", MountPropagation::PropagationHostToContainer),
        ("private", MountPropagation::PropagationPrivate),
    ] {
        ids.push(
            client
                .run_container(&pod, &container(name, propagation))
                .await
                .unwrap_or_else(|err| panic!("a container with a {propagation:?} volume: {err}")),
        );
    }
    let [source, receiver, private] = &ids[..] else {
        unreachable!("three containers")
    };

    // The rshared volume's mount reaches the rslave one.
    client
        .sh(
            source,
            "mkdir -p /vol/sub && mount -t tmpfs -o size=1m guest /vol/sub \
         && echo from-source > /vol/sub/note",
        )
        .await;
    assert_eq!(
        client.sh(receiver, "cat /vol/sub/note").await,
        "from-source\n",
        "the rslave volume receives the rshared one's mount"
    );
    // Not the private one, which sees the host directory only.
    assert_eq!(
        client
            .sh(private, "test -e /vol/sub/note && echo seen || echo absent")
            .await,
        "absent\n",
        "a private volume receives no mount"
    );
    // A slave sends nothing back.
    client
        .sh(
            receiver,
            "mkdir -p /vol/back && mount -t tmpfs -o size=1m receiver /vol/back \
         && touch /vol/back/mark",
        )
        .await;
    assert_eq!(
        client
            .sh(source, "test -e /vol/back/mark && echo seen || echo absent")
            .await,
        "absent\n",
        "an rslave volume's mount stays in its container"
    );
    // The guest's mounts never reach the host; its writes to the volume do.
    assert!(
        volume.path().join("sub").is_dir(),
        "the mkdir reached the host"
    );
    assert!(
        !volume.path().join("sub/note").exists(),
        "the guest's tmpfs reached the host"
    );

    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains("/.volumes/"),
        "a pod volume is still mounted after the pod:\n{mountinfo}"
    );
}
