//! Running netlink work inside the pod's network namespace.
//!
//! `setns` changes the namespace of the calling thread only, so the work
//! runs on a thread of its own that never goes back to the shim's pool: a
//! tokio worker left in the pod's namespace would open later sockets there.
//! Sockets and tap file descriptors opened on that thread stay bound to the
//! pod's namespace after it ends.

use std::fs::File;
use std::path::Path;

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

use super::NetworkError;

/// Runs `work` on a new thread inside the network namespace at `netns`,
/// with a netlink connection opened there (on a single-threaded tokio
/// runtime), and returns its result.
pub fn run_in<T, F, Fut>(netns: &Path, work: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetworkError>>,
{
    let file = File::open(netns).map_err(|source| NetworkError::Netns {
        path: netns.to_owned(),
        source,
    })?;
    let path = netns.to_owned();
    std::thread::Builder::new()
        .name("hull-netns".into())
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| NetworkError::Netns {
                path: path.clone(),
                source: errno.into(),
            })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| NetworkError::Io {
                    context: "a runtime for netlink".into(),
                    source,
                })?;
            runtime.block_on(async move {
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(|source| NetworkError::Io {
                        context: "a netlink socket".into(),
                        source,
                    })?;
                let connection = tokio::spawn(connection);
                let result = work(handle).await;
                connection.abort();
                result
            })
        })
        .map_err(|source| NetworkError::Io {
            context: "starting the network namespace thread".into(),
            source,
        })?
        .join()
        .map_err(|_| NetworkError::Io {
            context: "the network namespace thread".into(),
            source: std::io::Error::other("panicked"),
        })?
}
