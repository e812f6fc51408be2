//! The guest's network: loopback always, and the pod's interfaces when the
//! shim passes them (one virtio-net device per CNI interface on the host).
//!
//! The pod's containers share the guest's network stack, so `localhost`
//! between them works only once `lo` is up, which in a VM nobody else does.
//! Each pod interface keeps the MAC, addresses, MTU and routes that CNI gave
//! its host twin: the host mirrors frames between the two with tc, so the
//! pod's peers see the same interface they would with runc.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use hull_proto::v1 as api;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::error::AgentError;

fn netlink(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> AgentError {
    let context = context.into();
    move |err| AgentError::io(context, std::io::Error::other(err.to_string()))
}

/// One interface of [`api::Interface`], checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// One route of [`api::Route`], checked; `device` indexes the interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub device: usize,
}

/// The pod's network as the shim described it, every field checked before
/// anything is changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPlan {
    pub interfaces: Vec<InterfacePlan>,
    pub routes: Vec<RoutePlan>,
}

impl NetworkPlan {
    pub fn parse(interfaces: &[api::Interface], routes: &[api::Route]) -> Result<Self, AgentError> {
        let mut plan = Self::default();
        for (index, interface) in interfaces.iter().enumerate() {
            let field = |name: &str| format!("interfaces[{index}].{name}");
            if interface.name.is_empty()
                || interface.name.len() > 15
                || interface.name == "lo"
                || !interface
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(AgentError::invalid(
                    field("name"),
                    format!("{:?} is not a usable interface name", interface.name),
                ));
            }
            if plan.interfaces.iter().any(|i| i.name == interface.name) {
                return Err(AgentError::invalid(
                    field("name"),
                    format!("{:?} is given twice", interface.name),
                ));
            }
            if !(68..=65535).contains(&interface.mtu) {
                return Err(AgentError::invalid(
                    field("mtu"),
                    format!("{} is not between 68 and 65535", interface.mtu),
                ));
            }
            let addresses = interface
                .addresses
                .iter()
                .enumerate()
                .map(|(i, cidr)| {
                    parse_cidr(cidr)
                        .map_err(|r| AgentError::invalid(field(&format!("addresses[{i}]")), r))
                })
                .collect::<Result<_, _>>()?;
            plan.interfaces.push(InterfacePlan {
                name: interface.name.clone(),
                mac: parse_mac(&interface.mac).map_err(|r| AgentError::invalid(field("mac"), r))?,
                mtu: interface.mtu,
                addresses,
            });
        }
        for (index, route) in routes.iter().enumerate() {
            let field = |name: &str| format!("routes[{index}].{name}");
            let destination = if route.destination.is_empty() {
                None
            } else {
                Some(
                    parse_cidr(&route.destination)
                        .map_err(|r| AgentError::invalid(field("destination"), r))?,
                )
            };
            let gateway = if route.gateway.is_empty() {
                None
            } else {
                Some(route.gateway.parse::<IpAddr>().map_err(|_| {
                    AgentError::invalid(
                        field("gateway"),
                        format!("{:?} is not an IP address", route.gateway),
                    )
                })?)
            };
            let device = plan
                .interfaces
                .iter()
                .position(|i| i.name == route.device)
                .ok_or_else(|| {
                    AgentError::invalid(
                        field("device"),
                        format!("{:?} is not one of the interfaces", route.device),
                    )
                })?;
            match (destination, gateway) {
                (None, None) => {
                    return Err(AgentError::invalid(
                        field("gateway"),
                        "a default route needs a gateway",
                    ));
                }
                (Some((dst, _)), Some(gw)) if dst.is_ipv4() != gw.is_ipv4() => {
                    return Err(AgentError::invalid(
                        field("gateway"),
                        format!("{gw} is not of the destination's family"),
                    ));
                }
                _ => {}
            }
            plan.routes.push(RoutePlan {
                destination,
                gateway,
                device,
            });
        }
        Ok(plan)
    }

    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
    }
}

/// "02:00:0a:fe:00:05".
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{text:?} is not a MAC address like 02:00:00:00:00:01");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 == 1 {
        return Err(format!("{text} is a multicast address"));
    }
    Ok(mac)
}

/// "10.0.0.2/24" or "fd00::2/64".
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("{text:?} is not an address with a prefix length, like 10.0.0.2/24");
    let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
    let address: IpAddr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("{text}: the prefix length is over {max}"));
    }
    Ok((address, prefix))
}

/// Brings `lo` up.
pub async fn loopback_up() -> Result<(), AgentError> {
    with_netlink(|handle| async move {
        let link = link_named(&handle, "lo").await?;
        set_up(&handle, link.header.index, "lo").await
    })
    .await
}

/// Sets up the pod's interfaces, then its routes.
pub async fn configure(plan: &NetworkPlan) -> Result<(), AgentError> {
    if plan.is_empty() {
        return Ok(());
    }
    with_netlink(|handle| async move {
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(netlink("listing the guest's interfaces"))?;
        let mut indexes = Vec::new();
        for (position, interface) in plan.interfaces.iter().enumerate() {
            let field = format!("interfaces[{position}]");
            let link = links
                .iter()
                .find(|link| mac_of(link) == Some(&interface.mac[..]))
                .ok_or_else(|| {
                    AgentError::invalid(
                        format!("{field}.mac"),
                        format!("no guest interface has {}", format_mac(&interface.mac)),
                    )
                })?;
            let index = link.header.index;
            // A link is renamed only while it is down, as it is after boot.
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .name(interface.name.clone())
                        .mtu(interface.mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink(format!(
                    "{field}: naming it {} with MTU {}",
                    interface.name, interface.mtu
                )))?;
            for (address, prefix) in &interface.addresses {
                handle
                    .address()
                    .add(index, *address, *prefix)
                    .execute()
                    .await
                    .map_err(netlink(format!("{field}: adding {address}/{prefix}")))?;
            }
            set_up(&handle, index, &interface.name).await?;
            indexes.push(index);
        }
        for (position, route) in plan.routes.iter().enumerate() {
            add_route(&handle, route, indexes[route.device])
                .await
                .map_err(netlink(format!("routes[{position}]")))?;
        }
        Ok(())
    })
    .await
}

async fn add_route(handle: &Handle, route: &RoutePlan, index: u32) -> Result<(), rtnetlink::Error> {
    let ipv4 = match (route.destination, route.gateway) {
        (Some((dst, _)), _) => dst.is_ipv4(),
        (None, Some(gw)) => gw.is_ipv4(),
        (None, None) => true,
    };
    let message = if ipv4 {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(index);
        if let Some((IpAddr::V4(dst), prefix)) = route.destination {
            builder = builder.destination_prefix(dst, prefix);
        }
        if let Some(IpAddr::V4(gw)) = route.gateway {
            builder = builder.gateway(gw);
        }
        builder.build()
    } else {
        let mut builder = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(index);
        if let Some((IpAddr::V6(dst), prefix)) = route.destination {
            builder = builder.destination_prefix(dst, prefix);
        }
        if let Some(IpAddr::V6(gw)) = route.gateway {
            builder = builder.gateway(gw);
        }
        builder.build()
    };
    handle.route().add(message).execute().await
}

async fn with_netlink<F, Fut>(work: F) -> Result<(), AgentError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<(), AgentError>>,
{
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|err| AgentError::io("netlink socket", err))?;
    let connection = tokio::spawn(connection);
    let result = work(handle).await;
    connection.abort();
    result
}

async fn link_named(handle: &Handle, name: &str) -> Result<LinkMessage, AgentError> {
    handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(netlink(format!("finding {name}")))?
        .ok_or_else(|| AgentError::not_found(format!("the guest interface {name}")))
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), AgentError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(format!("bringing {name} up")))
}

fn mac_of(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Address(mac) => Some(mac.as_slice()),
            _ => None,
        })
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(name: &str, mac: &str, mtu: u32, addresses: &[&str]) -> api::Interface {
        api::Interface {
            name: name.into(),
            mac: mac.into(),
            mtu,
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn route(destination: &str, gateway: &str, device: &str) -> api::Route {
        api::Route {
            destination: destination.into(),
            gateway: gateway.into(),
            device: device.into(),
        }
    }

    fn field_of(interfaces: &[api::Interface], routes: &[api::Route]) -> String {
        match NetworkPlan::parse(interfaces, routes) {
            Err(AgentError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cni_interface_and_its_routes_parse() {
        let plan = NetworkPlan::parse(
            &[interface(
                "eth0",
                "0a:58:0a:fe:00:05",
                1500,
                &["10.254.0.5/24", "fd00::5/64"],
            )],
            &[
                route("", "10.254.0.1", "eth0"),
                route("10.9.0.0/16", "", "eth0"),
            ],
        )
        .expect("plan");
        assert_eq!(plan.interfaces[0].mac, [0x0a, 0x58, 0x0a, 0xfe, 0, 5]);
        assert_eq!(
            plan.interfaces[0].addresses,
            vec![
                ("10.254.0.5".parse().unwrap(), 24),
                ("fd00::5".parse().unwrap(), 64)
            ]
        );
        assert_eq!(plan.routes[0].destination, None);
        assert_eq!(
            plan.routes[1].destination,
            Some(("10.9.0.0".parse().unwrap(), 16))
        );
        assert_eq!(plan.routes[1].device, 0);
    }

    #[test]
    fn each_bad_field_is_named() {
        let good = interface("eth0", "02:00:00:00:00:01", 1500, &["10.0.0.2/24"]);
        for (bad, field) in [
            (
                interface("", "02:00:00:00:00:01", 1500, &[]),
                "interfaces[0].name",
            ),
            (
                interface("lo", "02:00:00:00:00:01", 1500, &[]),
                "interfaces[0].name",
            ),
            (
                interface("a-name-longer-than-15", "02:00:00:00:00:01", 1500, &[]),
                "interfaces[0].name",
            ),
            (
                interface("eth0", "02:00:00:00:01", 1500, &[]),
                "interfaces[0].mac",
            ),
            (
                interface("eth0", "02:00:00:00:00:zz", 1500, &[]),
                "interfaces[0].mac",
            ),
            (
                interface("eth0", "01:00:5e:00:00:01", 1500, &[]),
                "interfaces[0].mac",
            ),
            (
                interface("eth0", "02:00:00:00:00:01", 20, &[]),
                "interfaces[0].mtu",
            ),
            (
                interface("eth0", "02:00:00:00:00:01", 1500, &["10.0.0.2"]),
                "interfaces[0].addresses[0]",
            ),
            (
                interface("eth0", "02:00:00:00:00:01", 1500, &["10.0.0.2/33"]),
                "interfaces[0].addresses[0]",
            ),
        ] {
            assert_eq!(field_of(&[bad], &[]), field);
        }
        assert_eq!(
            field_of(&[good.clone(), good.clone()], &[]),
            "interfaces[1].name"
        );
        for (bad, field) in [
            (route("", "", "eth0"), "routes[0].gateway"),
            (route("", "10.0.0.1", "eth1"), "routes[0].device"),
            (route("10.0.0.0", "", "eth0"), "routes[0].destination"),
            (route("", "gateway", "eth0"), "routes[0].gateway"),
            (route("10.1.0.0/16", "fd00::1", "eth0"), "routes[0].gateway"),
        ] {
            assert_eq!(field_of(std::slice::from_ref(&good), &[bad]), field);
        }
    }
}
