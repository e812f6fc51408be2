//! virtio-fs (device ID 26) as a vhost-user front end: the FUSE requests
//! never pass through this process. The back end (virtiofsd) maps guest RAM
//! from the memfd, reads the rings itself, is kicked through eventfds the
//! vCPU thread writes, and calls back through eventfds [`relay`] turns into
//! interrupts. This device only brokers the setup and serves the config
//! space.

mod rate_limit;
mod relay;
mod vhost_user;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use self::rate_limit::RateLimit;
use self::relay::Relay;
use self::vhost_user::{Ring, Session};
use crate::devices::virtio::{Activation, VirtioDevice, read_config_bytes};

pub const VIRTIO_ID_FS: u32 = 26;
/// The config space's tag field, in bytes (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;
const CONFIG_LEN: usize = TAG_LEN + 4;
/// One high-priority queue (FUSE_INTERRUPT, FUSE_FORGET) and one request
/// queue; virtiofsd serves no more than that.
const NUM_QUEUES: usize = 2;
const REQUEST_QUEUES: u32 = 1;
const QUEUE_SIZE: u16 = 1024;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];
const LOG_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("fs.tag {tag:?}: {reason}")]
    Tag { tag: String, reason: String },
    #[error("fs.socket_path {}: no such socket; is virtiofsd running?", path.display())]
    SocketMissing { path: PathBuf },
    #[error("fs.socket_path {}: connection refused; nothing is listening there", path.display())]
    SocketRefused { path: PathBuf },
    #[error("fs.socket_path {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fs.socket_path: the vhost-user back end failed {step}: {source}")]
    Vhost {
        step: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("virtio-fs guest memory: {reason}")]
    Memory { reason: String },
    #[error("virtio-fs queue {queue}: its {part} at {addr:#x} is not in guest RAM")]
    QueueAddress {
        queue: usize,
        part: &'static str,
        addr: u64,
    },
    #[error("virtio-fs interrupt relay: {source}")]
    Relay {
        #[source]
        source: std::io::Error,
    },
}

/// The config space: the tag, NUL padded, then `num_request_queues`.
fn config_space(tag: &str) -> Result<[u8; CONFIG_LEN], FsError> {
    let invalid = |reason: String| FsError::Tag {
        tag: tag.to_owned(),
        reason,
    };
    if tag.is_empty() {
        return Err(invalid(
            "is empty; the guest mounts the file system by it".into(),
        ));
    }
    if tag.len() > TAG_LEN {
        return Err(invalid(format!(
            "is {} bytes long, more than the {TAG_LEN} the device can hold",
            tag.len()
        )));
    }
    if tag.contains('\0') {
        return Err(invalid("contains a NUL byte".into()));
    }
    let mut config = [0u8; CONFIG_LEN];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[TAG_LEN..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
    Ok(config)
}

/// What exists only between activation and reset.
#[derive(Debug)]
struct Active {
    /// By queue index; `None` for a queue the driver left unused.
    kicks: Vec<Option<EventFd>>,
    started: Vec<usize>,
    /// Dropping it stops and joins the thread.
    _relay: Relay,
}

#[derive(Debug)]
pub struct Fs {
    config: [u8; CONFIG_LEN],
    session: Session,
    active: Option<Active>,
    backend_gone: Arc<AtomicBool>,
    /// Separate, so that a guest hammering the kick register cannot hide
    /// an activation or reset failure.
    kick_log_limit: RateLimit,
    setup_log_limit: RateLimit,
}

impl Fs {
    /// Checks `tag`, connects to the back end at `socket_path` and learns
    /// its features.
    pub fn new(tag: &str, socket_path: &Path) -> Result<Self, FsError> {
        let config = config_space(tag)?;
        let session = Session::connect(socket_path)?;
        Ok(Self {
            config,
            session,
            active: None,
            backend_gone: Arc::new(AtomicBool::new(false)),
            kick_log_limit: RateLimit::new(LOG_INTERVAL),
            setup_log_limit: RateLimit::new(LOG_INTERVAL),
        })
    }

    fn start(&mut self, activation: Activation) -> Result<Active, FsError> {
        let Activation {
            memory,
            queues,
            interrupt,
            acked_features,
        } = activation;
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(|source| FsError::Relay { source });
        let mut kicks: Vec<Option<EventFd>> = Vec::with_capacity(queues.len());
        let mut calls = Vec::new();
        let mut started = Vec::new();
        for (index, queue) in queues.iter().enumerate() {
            if queue.ready() {
                kicks.push(Some(eventfd()?));
                calls.push(eventfd()?);
                started.push(index);
            } else {
                kicks.push(None);
            }
        }
        let rings: Vec<Ring<'_>> = started
            .iter()
            .zip(&calls)
            .filter_map(|(&index, call)| {
                Some(Ring {
                    index,
                    queue: &queues[index],
                    call,
                    kick: kicks[index].as_ref()?,
                })
            })
            .collect();
        let started_backend = self.session.start(&memory, &rings, acked_features);
        drop(rings);
        // The relay comes last: until it runs, the call eventfds just count,
        // so no completion is lost.
        let relay = started_backend.and_then(|()| {
            Relay::spawn(
                calls,
                self.session.watch_socket()?,
                interrupt,
                Arc::clone(&self.backend_gone),
            )
        });
        let relay = match relay {
            Ok(relay) => relay,
            Err(err) => {
                // Leave no ring half set up behind for the next activation.
                let _ = self.session.stop(&started);
                return Err(err);
            }
        };
        Ok(Active {
            kicks,
            started,
            _relay: relay,
        })
    }

    fn log_failure(&mut self, what: &str, err: &FsError) {
        if let Some(suppressed) = self.setup_log_limit.allow() {
            tracing::error!(%err, suppressed, "virtio-fs: {what}");
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn features(&self) -> u64 {
        self.session.device_features()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _: &[u8]) {
        tracing::debug!(offset, "virtio-fs: the config space is read-only");
    }

    fn activate(&mut self, activation: Activation) {
        if self.active.is_some() {
            self.reset();
        }
        match self.start(activation) {
            Ok(active) => self.active = Some(active),
            Err(err) => self.log_failure(
                "activation failed; the guest's file system will not answer",
                &err,
            ),
        }
    }

    fn queue_notify(&mut self, index: u32) {
        // Never the socket here: this runs on the vCPU thread for every kick.
        let kick = self
            .active
            .as_ref()
            .and_then(|active| active.kicks.get(index as usize)?.as_ref());
        let Some(kick) = kick else {
            if let Some(suppressed) = self.kick_log_limit.allow() {
                tracing::warn!(
                    index,
                    suppressed,
                    "virtio-fs: a kick on a queue that is not running"
                );
            }
            return;
        };
        let result = kick.write(1);
        if self.backend_gone.load(Ordering::SeqCst) {
            if let Some(suppressed) = self.kick_log_limit.allow() {
                tracing::error!(
                    index,
                    suppressed,
                    "virtio-fs: the guest kicked a queue, but virtiofsd is gone"
                );
            }
        } else if let Err(err) = result
            && let Some(suppressed) = self.kick_log_limit.allow()
        {
            tracing::warn!(index, %err, suppressed, "virtio-fs: cannot kick the back end");
        }
    }

    fn reset(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        // The rings first, so the relay sees the back end's last calls.
        if let Err(err) = self.session.stop(&active.started) {
            self.log_failure("stopping the back end's rings", &err);
        }
        drop(active);
    }
}

#[cfg(test)]
mod tests;
