//! What CNI made in the pod's network namespace: its interfaces, with
//! their MAC, MTU and addresses, and the routes that go out of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::NetworkError;

/// The main routing table's id.
const MAIN_TABLE: u8 = 254;

/// One interface CNI set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniInterface {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// (address, prefix length), without IPv6 link-local ones: the guest
    /// derives its own from the same MAC.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A route out of one of the [`CniInterface`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniRoute {
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub device: String,
}

fn netlink(context: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |err| NetworkError::Netlink {
        context: context.into(),
        reason: err.to_string(),
    }
}

/// The namespace's Ethernet interfaces other than loopback and taps.
pub async fn interfaces(handle: &Handle) -> Result<Vec<CniInterface>, NetworkError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing the pod's interfaces"))?;
    let mut found = Vec::new();
    for link in links {
        if link.header.flags.contains(LinkFlags::Loopback) || is_tun(&link) {
            continue;
        }
        let mut name = None;
        let mut mac = None;
        let mut mtu = None;
        for attribute in &link.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                _ => {}
            }
        }
        // Only Ethernet-like links can be mirrored into a tap.
        let (Some(name), Some(mac), Some(mtu)) = (name, mac, mtu) else {
            continue;
        };
        let index = link.header.index;
        let addresses = addresses(handle, index).await?;
        found.push(CniInterface {
            index,
            name,
            mac,
            mtu,
            addresses,
        });
    }
    Ok(found)
}

fn is_tun(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attribute| match attribute {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Tun))),
        _ => false,
    })
}

async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>, NetworkError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing the pod's addresses"))?;
    Ok(messages
        .into_iter()
        .filter_map(|message| {
            let prefix = message.header.prefix_len;
            message
                .attributes
                .into_iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Address(address) => Some((address, prefix)),
                    _ => None,
                })
        })
        .filter(|(address, _)| !is_link_local(address))
        .collect())
}

fn is_link_local(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The main table's unicast routes out of `interfaces`, without those the
/// kernel makes by itself for each address (the guest's kernel makes them
/// too).
pub async fn routes(
    handle: &Handle,
    interfaces: &[CniInterface],
) -> Result<Vec<CniRoute>, NetworkError> {
    let mut messages: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing the pod's IPv4 routes"))?;
    let v6: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing the pod's IPv6 routes"))?;
    messages.extend(v6);
    let mut routes = Vec::new();
    for message in messages {
        if message.header.table != MAIN_TABLE
            || message.header.kind != RouteType::Unicast
            || message.header.protocol == RouteProtocol::Kernel
        {
            continue;
        }
        let mut destination = None;
        let mut gateway = None;
        let mut device = None;
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(address) => {
                    destination =
                        ip_of(address).map(|ip| (ip, message.header.destination_prefix_length));
                }
                RouteAttribute::Gateway(address) => gateway = ip_of(address),
                RouteAttribute::Oif(index) => {
                    device = interfaces
                        .iter()
                        .find(|i| i.index == *index)
                        .map(|i| i.name.clone());
                }
                _ => {}
            }
        }
        let Some(device) = device else { continue };
        if destination.is_none() && gateway.is_none() {
            continue;
        }
        routes.push(CniRoute {
            destination,
            gateway,
            device,
        });
    }
    Ok(routes)
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
