//! Pod networking through CNI (Debian's bridge and host-local plugins on a
//! test bridge) and CRI, with hull pods under QEMU TCG on this host: a pod
//! reaches a peer namespace on the bridge, the peer reaches a server in the
//! pod at the pod IP, two hull pods reach each other, and twenty pod
//! cycles leave no tap, filter, namespace or process behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hull_tests::containerd::{self, HULL_HANDLER};
use hull_tests::cri::{ContainerSpec, CriClient, Pod, PodSpec};
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::kvm_host;
use hull_tests::peer::Peer;

const NS: &str = "hull-net";
const PEER_CIDR: &str = "10.254.0.250/24";
const HTTP_PORT: u16 = 8080;
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Set in the KVM test host: the VMM every pod there must run under.
const EXPECT_BACKEND: &str = "HULL_EXPECT_BACKEND";

/// One test at a time: each boots emulated VMs, and two cores are few.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `args` run inside the network namespace at `netns`.
fn in_netns(netns: &Path, args: &[&str]) -> String {
    let output = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .expect("nsenter");
    assert!(
        output.status.success(),
        "{args:?} in {}: {}",
        netns.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The pod's network namespace, as the shim recorded it.
fn pod_netns(rt: &HullRuntime, pod_dirs_before: &[std::path::PathBuf]) -> std::path::PathBuf {
    let dir = rt
        .pod_dirs()
        .into_iter()
        .find(|dir| !pod_dirs_before.contains(dir))
        .expect("the new pod's directory");
    HullRuntime::check_backend(std::slice::from_ref(&dir));
    std::fs::read_to_string(dir.join("netns"))
        .expect("the pod's netns record")
        .into()
}

async fn run_pod(client: &mut CriClient, rt: &HullRuntime, name: &str) -> Pod {
    let mut spec = PodSpec::new(name, HULL_HANDLER, &rt.state_dir.with_file_name("logs"));
    spec.host_network = false;
    client.run_pod(&spec).await.unwrap_or_else(|err| {
        panic!(
            "RunPodSandbox {name}: {err}\n{}",
            rt.containerd.log_tail(80)
        )
    })
}

async fn exec(client: &mut CriClient, id: &str, cmd: &[&str]) -> String {
    let output = client
        .exec_sync(id, cmd, EXEC_TIMEOUT)
        .await
        .unwrap_or_else(|err| panic!("ExecSync {cmd:?}: {err}"));
    assert_eq!(output.exit_code, 0, "{cmd:?}: {output:?}");
    output.stdout
}

/// The body of `http://{address}:{HTTP_PORT}{path}`, fetched inside
/// container `id`, retried for about ten seconds. busybox's nc, not its
/// wget: the static wget crashes without the NSS files a busybox image
/// lacks.
async fn http_get_in(client: &mut CriClient, id: &str, address: &str, path: &str) -> String {
    let script = format!(
        "for i in $(seq 50); do \
           out=$(printf 'GET {path} HTTP/1.0\r\n\r\n' | nc {address} {HTTP_PORT}) \
             && [ -n \"$out\" ] && {{ printf '%s\n' \"$out\" | tail -n 1; exit 0; }}; \
           sleep 0.2; \
         done; exit 1"
    );
    exec(client, id, &["sh", "-c", &script]).await
}

/// The interfaces enslaved to the CNI bridge.
fn bridge_ports(bridge: &str) -> Vec<String> {
    let output = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn hull_pods_reach_a_peer_are_reached_and_reach_each_other() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let mut client = CriClient::connect(rt.containerd.cri_socket()).await;
    client.wait_for_test_images().await;

    let before = rt.pod_dirs();
    let pod_a = run_pod(&mut client, &rt, "net-a").await;
    let netns_a = pod_netns(&rt, &before);
    let ip_a = client.pod_ip(&pod_a.id).await.expect("pod A status");
    assert!(ip_a.starts_with("10.254.0."), "pod A's IP: {ip_a:?}");

    // A server in the pod; the guest's eth0 is the CNI interface's twin.
    let server = ContainerSpec::new(
        "server",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo from-pod-a > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    let server_id = client
        .run_container(&pod_a, &server)
        .await
        .unwrap_or_else(|err| panic!("server: {err}\n{}", rt.containerd.log_tail(60)));
    let guest = exec(&mut client, &server_id, &["sh", "-c", "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip -4 -o addr show eth0; uname -r"]).await;
    // sysfs shows the host's interfaces whatever the network namespace:
    // ask netlink in the pod's.
    let host_link = in_netns(&netns_a, &["ip", "-o", "link", "show", "eth0"]);
    let guest_mac = guest.lines().next().unwrap_or_default();
    assert!(
        !guest_mac.is_empty() && host_link.contains(&format!("link/ether {guest_mac} ")),
        "guest {guest:?}, pod netns eth0 {host_link:?}"
    );
    assert!(guest.contains(&format!("inet {ip_a}/24")), "{guest}");
    let host_release = nix::sys::utsname::uname().expect("uname");
    assert!(
        !guest.contains(&*host_release.release().to_string_lossy()),
        "the server ran on the host's kernel: {guest}"
    );
    // The tap and the mirroring are in the pod's namespace.
    let links = in_netns(&netns_a, &["ip", "-o", "link", "show"]);
    assert!(links.contains("tap0_hull"), "{links}");
    let filters = in_netns(
        &netns_a,
        &["tc", "filter", "show", "dev", "eth0", "ingress"],
    );
    assert!(
        filters.contains("Egress Redirect to device tap0_hull"),
        "{filters}"
    );

    // 1. Outbound: the pod fetches from a peer namespace on the bridge.
    let bridge = rt
        .containerd
        .cni_bridge()
        .expect("the CNI bridge")
        .to_owned();
    let www = tempfile::tempdir().expect("peer www");
    std::fs::write(www.path().join("hello.txt"), "from-the-peer\n").expect("peer file");
    let mut peer = Peer::on_bridge(&bridge, PEER_CIDR);
    peer.serve_http(www.path(), HTTP_PORT);
    let fetched = http_get_in(&mut client, &server_id, &peer.address, "/hello.txt").await;
    assert_eq!(fetched, "from-the-peer\n");

    // 2. Inbound: the peer fetches from the pod's server at the pod IP.
    let page = peer.fetch(&ip_a, HTTP_PORT, "/", EXEC_TIMEOUT);
    assert_eq!(page, "from-pod-a\n");

    // 3. Pod to pod: a second hull pod fetches from the first.
    let before = rt.pod_dirs();
    let pod_b = run_pod(&mut client, &rt, "net-b").await;
    pod_netns(&rt, &before);
    let ip_b = client.pod_ip(&pod_b.id).await.expect("pod B status");
    assert_ne!(ip_a, ip_b);
    let client_b = ContainerSpec::new("client", BUSYBOX_IMAGE, &["sleep", "1000"]);
    let client_id = client
        .run_container(&pod_b, &client_b)
        .await
        .expect("client");
    let boot_a = exec(
        &mut client,
        &server_id,
        &["cat", "/proc/sys/kernel/random/boot_id"],
    )
    .await;
    let boot_b = exec(
        &mut client,
        &client_id,
        &["cat", "/proc/sys/kernel/random/boot_id"],
    )
    .await;
    assert_ne!(boot_a, boot_b, "the two pods share a VM");
    let fetched = http_get_in(&mut client, &client_id, &ip_a, "/").await;
    assert_eq!(fetched, "from-pod-a\n");

    for pod in [&pod_a, &pod_b] {
        client.stop_pod(&pod.id).await.expect("StopPodSandbox");
        client.remove_pod(&pod.id).await.expect("RemovePodSandbox");
    }
    drop(peer);
    let left = rt.leftovers(Duration::from_secs(15));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    assert_eq!(bridge_ports(&bridge), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn twenty_networked_pods_leave_no_tap_filter_or_namespace() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    let mut client = CriClient::connect(rt.containerd.cri_socket()).await;
    client.wait_for_test_images().await;
    let bridge = {
        // The bridge plugin makes the bridge with the first pod.
        let pod = run_pod(&mut client, &rt, "cycle-0").await;
        client.stop_pod(&pod.id).await.expect("StopPodSandbox");
        client.remove_pod(&pod.id).await.expect("RemovePodSandbox");
        rt.containerd
            .cni_bridge()
            .expect("the CNI bridge")
            .to_owned()
    };
    for cycle in 1..20 {
        let before = rt.pod_dirs();
        let pod = run_pod(&mut client, &rt, &format!("cycle-{cycle}")).await;
        let netns = pod_netns(&rt, &before);
        let links = in_netns(&netns, &["ip", "-o", "link", "show"]);
        assert!(links.contains("tap0_hull"), "cycle {cycle}: {links}");
        assert_eq!(bridge_ports(&bridge).len(), 1, "cycle {cycle}");
        client.stop_pod(&pod.id).await.expect("StopPodSandbox");
        client.remove_pod(&pod.id).await.expect("RemovePodSandbox");
        assert!(
            !netns.exists(),
            "cycle {cycle}: {} outlived its pod",
            netns.display()
        );
    }
    let left = rt.leftovers(Duration::from_secs(15));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    assert_eq!(bridge_ports(&bridge), Vec::<String>::new());
    let netns_mounts: Vec<_> = containerd::mounts_under(rt.containerd.dir())
        .into_iter()
        .filter(|point| point.to_string_lossy().contains("netns"))
        .collect();
    assert!(netns_mounts.is_empty(), "{netns_mounts:?}");
    let ipam = rt.containerd.dir().join("cni/ipam/hull-test");
    let reserved: Vec<_> = std::fs::read_dir(&ipam)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("10."))
        .collect();
    assert!(
        reserved.is_empty(),
        "addresses still reserved: {reserved:?}"
    );
}

#[test]
fn pods_reach_each_other_with_the_hull_backend_in_the_kvm_test_host() {
    if std::env::var_os(EXPECT_BACKEND).is_some() {
        return; // already inside
    }
    // Not beside the other tests' emulated pods: the nested guests are
    // slow enough on two cores as it is.
    let _serial = serial();
    kvm_host::rerun_tests(kvm_host::Rerun {
        tests: &["hull_pods_reach_a_peer_are_reached_and_reach_each_other"],
        env: &format!("{EXPECT_BACKEND}=hull-vmm"),
        include_ignored: false,
        tmpfs_tmp: true,
        memory_mib: 3072,
        vcpus: 1,
        timeout: Duration::from_secs(600),
    });
}
