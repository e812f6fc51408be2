//! The guest's network, as far as the agent sets it up: the loopback
//! interface. The pod's containers share the guest's network stack, so
//! `localhost` between them works only once `lo` is up, which in a VM
//! nobody else does.

use futures::TryStreamExt;
use rtnetlink::LinkUnspec;

use crate::error::AgentError;

fn netlink(err: impl std::fmt::Display) -> AgentError {
    AgentError::io("loopback", std::io::Error::other(err.to_string()))
}

/// Brings `lo` up.
pub async fn loopback_up() -> Result<(), AgentError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|err| AgentError::io("netlink socket", err))?;
    let connection = tokio::spawn(connection);
    let result = async {
        let link = handle
            .link()
            .get()
            .match_name("lo".to_owned())
            .execute()
            .try_next()
            .await
            .map_err(netlink)?
            .ok_or_else(|| netlink("the guest has no lo interface"))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(link.header.index).up().build())
            .execute()
            .await
            .map_err(netlink)
    }
    .await;
    connection.abort();
    result
}
