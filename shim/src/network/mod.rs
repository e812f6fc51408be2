//! Pod networking, the way Kata does it by default: the CNI plugins stay
//! unmodified and the VM is transparent to them. For each interface CNI
//! made in the pod's network namespace the shim creates a tap there and
//! mirrors frames both ways between the two with tc ([`tc`]); the tap
//! becomes the VM's virtio-net device, and the agent gives the guest's
//! interface the same MAC, MTU, addresses and routes ([`discover`]).
//!
//! A pod without a network namespace of its own (plain `ctr`, host-network
//! CRI pods) gets only loopback.

mod discover;
mod netns;
mod tap;
mod tc;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use hull_hypervisor::NetDevice;
use hull_proto::v1 as api;
use rtnetlink::{Handle, LinkUnspec};

pub use discover::{CniInterface, CniRoute};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("the pod's network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {reason}")]
    Netlink { context: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The pod's interfaces as the guest gets them, and what the host keeps to
/// undo the mirroring.
#[derive(Debug)]
pub struct Attached {
    pub network: PodNetwork,
    /// One per interface, in order: the VMM's virtio-net devices.
    pub devices: Vec<NetDevice>,
    pub interfaces: Vec<api::Interface>,
    pub routes: Vec<api::Route>,
}

/// The tc mirroring set up in a pod's namespace. The taps need no undoing:
/// they go with the last descriptor, the VMM's.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    /// (index, name) of each CNI interface that has an ingress qdisc.
    mirrored: Vec<(u32, String)>,
}

fn netlink(context: String) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |err| NetworkError::Netlink {
        context,
        reason: err.to_string(),
    }
}

/// The tap that mirrors the `position`th CNI interface.
fn tap_name(position: usize) -> String {
    format!("tap{position}_hull")
}

/// Creates a tap for every CNI interface in `netns` and mirrors the two.
/// On failure whatever was set up is undone.
pub fn attach(netns: &Path) -> Result<Attached, NetworkError> {
    let path = netns.to_owned();
    netns::run_in(netns, move |handle| async move {
        let mut network = PodNetwork {
            netns: path,
            mirrored: Vec::new(),
        };
        let result = attach_all(&handle, &mut network).await;
        if result.is_err() {
            network.remove_all(&handle).await;
        }
        let (taps, interfaces, routes) = result?;
        let devices = taps
            .into_iter()
            .zip(&interfaces)
            .map(|(tap, interface)| NetDevice {
                tap,
                mac: interface.mac,
                mtu: interface.mtu,
            })
            .collect();
        Ok(Attached {
            network,
            devices,
            interfaces: interfaces.iter().map(to_api_interface).collect(),
            routes: routes.iter().map(to_api_route).collect(),
        })
    })
}

type Found = (Vec<Arc<OwnedFd>>, Vec<CniInterface>, Vec<CniRoute>);

async fn attach_all(handle: &Handle, network: &mut PodNetwork) -> Result<Found, NetworkError> {
    let interfaces = discover::interfaces(handle).await?;
    let routes = discover::routes(handle, &interfaces).await?;
    let mut taps = Vec::new();
    for (position, interface) in interfaces.iter().enumerate() {
        let name = tap_name(position);
        let tap = tap::create(&name)?;
        let index = handle
            .link()
            .get()
            .match_name(name.clone())
            .execute()
            .try_next()
            .await
            .map_err(netlink(format!("finding the tap {name}")))?
            .map(|link| link.header.index)
            .ok_or_else(|| NetworkError::Netlink {
                context: format!("the tap {name}"),
                reason: "is not there after its creation".into(),
            })?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(interface.mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("bringing the tap {name} up")))?;
        network
            .mirrored
            .push((interface.index, interface.name.clone()));
        tc::redirect(handle, (interface.index, &interface.name), (index, &name)).await?;
        tc::redirect(handle, (index, &name), (interface.index, &interface.name)).await?;
        tracing::info!(interface = %interface.name, tap = %name, "mirroring the pod interface into the VM");
        taps.push(Arc::new(tap));
    }
    Ok((taps, interfaces, routes))
}

impl PodNetwork {
    /// Removes the mirroring. A namespace or interface that is gone already
    /// (CNI tore it down first) leaves nothing to do.
    pub fn detach(self) {
        if self.mirrored.is_empty() {
            return;
        }
        let netns = self.netns.clone();
        let result = netns::run_in(&netns, move |handle| async move {
            self.remove_all(&handle).await;
            Ok(())
        });
        warn_unless_gone(result, "removing the pod's tc mirroring");
    }

    async fn remove_all(&self, handle: &Handle) {
        for (index, name) in &self.mirrored {
            if let Err(err) = tc::remove_redirect(handle, *index, name).await {
                // ENODEV / EINVAL: the interface or its qdisc is gone already.
                tracing::debug!(%err, "the pod interface's mirroring");
            }
        }
    }
}

/// The cleanup after a shim crash, when no [`PodNetwork`] survived: the
/// VMM is dead and its taps with it, so every CNI interface's ingress qdisc
/// in `netns` is removed.
pub fn clean_up(netns: &Path) {
    let path = netns.to_owned();
    let result = netns::run_in(netns, move |handle| async move {
        let found = discover::interfaces(&handle).await;
        if let Ok(interfaces) = &found {
            let network = PodNetwork {
                netns: path,
                mirrored: interfaces
                    .iter()
                    .map(|i| (i.index, i.name.clone()))
                    .collect(),
            };
            network.remove_all(&handle).await;
        }
        found.map(drop)
    });
    warn_unless_gone(result, "cleaning up the pod's network");
}

/// A namespace that is gone already (CRI removed it) left nothing to undo.
fn warn_unless_gone(result: Result<(), NetworkError>, what: &str) {
    match result {
        Ok(()) => {}
        Err(NetworkError::Netns { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(%err, "{what}"),
    }
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn to_api_interface(interface: &CniInterface) -> api::Interface {
    api::Interface {
        name: interface.name.clone(),
        mac: format_mac(&interface.mac),
        mtu: interface.mtu,
        addresses: interface
            .addresses
            .iter()
            .map(|(address, prefix)| format!("{address}/{prefix}"))
            .collect(),
    }
}

fn to_api_route(route: &CniRoute) -> api::Route {
    api::Route {
        destination: route
            .destination
            .map(|(address, prefix): (IpAddr, u8)| format!("{address}/{prefix}"))
            .unwrap_or_default(),
        gateway: route.gateway.map(|g| g.to_string()).unwrap_or_default(),
        device: route.device.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_and_routes_reach_the_agent_as_text() {
        let interface = CniInterface {
            index: 2,
            name: "eth0".into(),
            mac: [0x0a, 0x58, 0x0a, 0xfe, 0, 5],
            mtu: 1450,
            addresses: vec![("10.254.0.5".parse().unwrap(), 24)],
        };
        assert_eq!(
            to_api_interface(&interface),
            api::Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:fe:00:05".into(),
                mtu: 1450,
                addresses: vec!["10.254.0.5/24".into()],
            }
        );
        let route = CniRoute {
            destination: None,
            gateway: Some("10.254.0.1".parse().unwrap()),
            device: "eth0".into(),
        };
        assert_eq!(
            to_api_route(&route),
            api::Route {
                destination: String::new(),
                gateway: "10.254.0.1".into(),
                device: "eth0".into(),
            }
        );
        assert_eq!(tap_name(0), "tap0_hull");
    }

    /// Named network namespaces made with `ip`, deleted when dropped.
    struct Namespaces(Vec<String>);

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", name])
                    .status();
            }
        }
    }

    fn run(args: &[&str]) -> String {
        let output = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A namespace set up as the CNI bridge plugin leaves a pod's: a veth
    /// `eth0` with an address and a route (its peer in another namespace).
    /// Attaching mirrors it into a tap both ways; dropping the tap and
    /// detaching leaves the namespace as it was.
    #[test]
    #[ignore = "needs root (network namespaces): scripts/test.sh runs it with --ignored, so that plain cargo test -p hull-shim runs without root"]
    fn attach_mirrors_each_interface_and_detach_undoes_it() {
        let pod = format!("hull-ut-pod-{}", std::process::id());
        let other = format!("hull-ut-peer-{}", std::process::id());
        run(&["ip", "netns", "add", &pod]);
        let _namespaces = Namespaces(vec![pod.clone(), other.clone()]);
        run(&["ip", "netns", "add", &other]);
        run(&[
            "ip", "-n", &pod, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
            "netns", &other,
        ]);
        run(&[
            "ip",
            "-n",
            &pod,
            "link",
            "set",
            "eth0",
            "address",
            "0a:58:0a:fe:09:05",
            "mtu",
            "1450",
            "up",
        ]);
        run(&[
            "ip",
            "-n",
            &pod,
            "addr",
            "add",
            "10.254.9.5/24",
            "dev",
            "eth0",
        ]);
        run(&[
            "ip",
            "-n",
            &pod,
            "route",
            "add",
            "10.9.0.0/16",
            "via",
            "10.254.9.1",
        ]);

        let attached = attach(&Path::new("/run/netns").join(&pod)).expect("attach");
        assert_eq!(
            attached.interfaces,
            vec![api::Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:fe:09:05".into(),
                mtu: 1450,
                addresses: vec!["10.254.9.5/24".into()],
            }]
        );
        assert_eq!(
            attached.routes,
            vec![api::Route {
                destination: "10.9.0.0/16".into(),
                gateway: "10.254.9.1".into(),
                device: "eth0".into(),
            }]
        );
        assert_eq!(attached.devices.len(), 1);
        assert_eq!(attached.devices[0].mac, [0x0a, 0x58, 0x0a, 0xfe, 9, 5]);
        let tap = run(&["ip", "-n", &pod, "-o", "link", "show", "tap0_hull"]);
        assert!(tap.contains("mtu 1450") && tap.contains("UP"), "{tap}");
        let to_tap = run(&["tc", "-n", &pod, "filter", "show", "dev", "eth0", "ingress"]);
        assert!(
            to_tap.contains("Egress Redirect to device tap0_hull"),
            "{to_tap}"
        );
        let to_eth0 = run(&[
            "tc",
            "-n",
            &pod,
            "filter",
            "show",
            "dev",
            "tap0_hull",
            "ingress",
        ]);
        assert!(
            to_eth0.contains("Egress Redirect to device eth0"),
            "{to_eth0}"
        );

        let Attached {
            network, devices, ..
        } = attached;
        // The VMM's copy would be the last one; with it the tap goes.
        drop(devices);
        let links = run(&["ip", "-n", &pod, "-o", "link", "show"]);
        assert!(!links.contains("tap0_hull"), "{links}");
        network.detach();
        let qdiscs = run(&["tc", "-n", &pod, "qdisc", "show", "dev", "eth0"]);
        assert!(!qdiscs.contains("ingress"), "{qdiscs}");
        // The namespace is otherwise as CNI left it.
        let addresses = run(&["ip", "-n", &pod, "-o", "addr", "show", "dev", "eth0"]);
        assert!(addresses.contains("10.254.9.5/24"), "{addresses}");
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let err = attach(Path::new("/run/netns/hull-no-such-namespace")).expect_err("attach");
        assert!(
            err.to_string()
                .starts_with("the pod's network namespace /run/netns/hull-no-such-namespace"),
            "{err}"
        );
        // Detaching from a namespace that is gone is no error.
        clean_up(Path::new("/run/netns/hull-no-such-namespace"));
    }
}
