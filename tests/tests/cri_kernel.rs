//! The guest kernel has what pods routinely ask of it (issue 17,
//! acceptance 6): a NET_ADMIN container makes a bridge and a veth pair,
//! and lists and changes netfilter tables through iptables and ip6tables,
//! nft and legacy alike (istio's init container sets a nat REDIRECT); TUN
//! and hugetlbfs are there. Runs under QEMU TCG here.

use hull_tests::containerd::CRI_NAMESPACE;
use hull_tests::cri::ContainerSpec;
use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::{self, NET_TOOLS_IMAGE};
use hull_tests::{serial, unique_id};

const NS: &str = "hull-kernel";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn a_net_admin_container_makes_bridges_and_netfilter_rules() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, true);
    rt.containerd.import(CRI_NAMESPACE, &image::net_tools());
    let (mut client, pod) = rt.run_cri_pod(&rt.pod_spec(&unique_id("kernel"))).await;
    let spec = ContainerSpec {
        add_capabilities: vec!["NET_ADMIN".into()],
        ..ContainerSpec::new("netadmin", NET_TOOLS_IMAGE, &["sleep", "3600"])
    };
    let id = client
        .run_container(&pod, &spec)
        .await
        .expect("the NET_ADMIN container");

    // The CRI validation suite's NET_ADMIN check, then a veth pair.
    client
        .sh(&id, "brctl addbr foobar && ip link show foobar")
        .await;
    client
        .sh(&id, "ip link add hullv0 type veth && ip link show hullv0")
        .await;
    // Every flavour lists its filter table.
    for tool in [
        "iptables",
        "ip6tables",
        "iptables-legacy",
        "ip6tables-legacy",
    ] {
        let listed = client.sh(&id, &format!("{tool} -L")).await;
        assert!(
            listed.contains("Chain INPUT") && listed.contains("Chain OUTPUT"),
            "{tool} -L: {listed}"
        );
    }
    // What an istio-init-style container does: a nat REDIRECT, read back.
    let nat = client
        .sh(
            &id,
            "iptables -t nat -A OUTPUT -p tcp --dport 15001 -j REDIRECT --to-ports 15006 \
             && ip6tables -t nat -A OUTPUT -p tcp --dport 15001 -j REDIRECT --to-ports 15006 \
             && iptables -t nat -S OUTPUT && ip6tables -t nat -S OUTPUT",
        )
        .await;
    assert_eq!(
        nat.matches("--to-ports 15006").count(),
        2,
        "the nat rules: {nat}"
    );
    // TUN and hugetlbfs are built in.
    let present = client
        .sh(
            &id,
            "test -e /sys/class/misc/tun && echo tun; grep -w hugetlbfs /proc/filesystems",
        )
        .await;
    assert!(
        present.contains("tun") && present.contains("hugetlbfs"),
        "{present}"
    );
    client.stop_and_remove_pod(&pod.id, &rt.containerd).await;
}
