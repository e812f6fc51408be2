//! The tc redirect between a CNI interface and its tap, both ways: an
//! ingress qdisc on each, with a match-all u32 filter whose mirred action
//! hands every frame to the other's egress. The namespace's own stack never
//! sees the pod's traffic; the guest does.

use rtnetlink::Handle;
use rtnetlink::packet_route::tc::TcHandle;

use super::NetworkError;

/// ETH_P_ALL, in network byte order as tc wants the protocol.
const ALL_PROTOCOLS: u16 = (libc::ETH_P_ALL as u16).to_be();

fn netlink(context: String) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |err| NetworkError::Netlink {
        context,
        reason: err.to_string(),
    }
}

/// Sends everything that arrives on `from` out of `to`.
pub async fn redirect(
    handle: &Handle,
    from: (u32, &str),
    to: (u32, &str),
) -> Result<(), NetworkError> {
    let (from_index, from_name) = from;
    let (to_index, to_name) = to;
    handle
        .qdisc()
        .add(from_index as i32)
        .ingress()
        .execute()
        .await
        .map_err(netlink(format!("adding an ingress qdisc to {from_name}")))?;
    handle
        .traffic_filter(from_index as i32)
        .add()
        .ingress()
        .protocol(ALL_PROTOCOLS)
        .redirect(to_index)
        .map_err(netlink(format!("a redirect filter from {from_name}")))?
        .execute()
        .await
        .map_err(netlink(format!("redirecting {from_name} to {to_name}")))
}

/// Removes the ingress qdisc of `index`, and with it its filters.
pub async fn remove_redirect(handle: &Handle, index: u32, name: &str) -> Result<(), NetworkError> {
    let mut request = handle.qdisc().del(index as i32);
    request.message_mut().header.parent = TcHandle::INGRESS;
    request.message_mut().header.handle = TcHandle::from(0xffff_0000);
    request
        .execute()
        .await
        .map_err(netlink(format!("removing the ingress qdisc of {name}")))
}
