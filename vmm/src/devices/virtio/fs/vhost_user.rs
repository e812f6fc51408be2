//! The vhost-user session with the back end (virtiofsd): the handshake when
//! the device is made, and the ring setup and teardown when the driver
//! activates and resets it.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{FsError, NUM_QUEUES};
use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::memory::GuestMemory;

/// The ring features the back end implements on its own; the transport
/// here never looks inside the rings, so it can pass them through.
const PASSTHROUGH_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// REPLY_ACK makes every request report failure where it happens instead of
/// as a broken session later. RESET_DEVICE lets a guest's device reset start
/// a fresh FUSE session. CONFIG is left out on purpose: the tag comes from
/// our own configuration, not from the back end's command line.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::REPLY_ACK.union(VhostUserProtocolFeatures::RESET_DEVICE);

/// A back end that stops answering must not wedge the vCPU thread, which
/// is where activation and reset run.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// virtiofsd may have created its socket but not be listening yet.
const REFUSED_RETRIES: u32 = 5;
const REFUSED_BACKOFF: Duration = Duration::from_millis(100);

/// One ring to hand to the back end.
#[derive(Debug)]
pub struct Ring<'a> {
    pub index: usize,
    pub queue: &'a Queue,
    pub call: &'a EventFd,
    pub kick: &'a EventFd,
}

pub struct Session {
    frontend: Frontend,
    /// A second handle on the connection, for watching it hang up.
    socket: UnixStream,
    backend_features: u64,
    protocol: Option<VhostUserProtocolFeatures>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field(
                "backend_features",
                &format_args!("{:#x}", self.backend_features),
            )
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

fn vhost(step: &'static str) -> impl FnOnce(vhost::Error) -> FsError {
    move |source| FsError::Vhost { step, source }
}

impl Session {
    /// Connects and does the part of the handshake that does not depend on
    /// the driver: SET_OWNER, the feature and protocol-feature exchange.
    pub fn connect(path: &Path) -> Result<Self, FsError> {
        let stream = connect_socket(path)?;
        let socket_error = |source| FsError::Connect {
            path: path.to_owned(),
            source,
        };
        stream
            .set_read_timeout(Some(SOCKET_TIMEOUT))
            .map_err(socket_error)?;
        stream
            .set_write_timeout(Some(SOCKET_TIMEOUT))
            .map_err(socket_error)?;
        let socket = stream.try_clone().map_err(socket_error)?;
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        frontend.set_owner().map_err(vhost("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(vhost("GET_FEATURES"))?;
        let protocol = if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
        {
            let offered = frontend
                .get_protocol_features()
                .map_err(vhost("GET_PROTOCOL_FEATURES"))?;
            let acked = offered & WANTED_PROTOCOL_FEATURES;
            frontend
                .set_protocol_features(acked)
                .map_err(vhost("SET_PROTOCOL_FEATURES"))?;
            Some(acked)
        } else {
            None
        };
        tracing::debug!(
            backend_features = format_args!("{backend_features:#x}"),
            ?protocol,
            "virtio-fs: connected to the vhost-user back end"
        );
        Ok(Self {
            frontend,
            socket,
            backend_features,
            protocol,
        })
    }

    /// What the device offers the driver.
    pub fn device_features(&self) -> u64 {
        (self.backend_features & PASSTHROUGH_FEATURES) | VIRTIO_F_VERSION_1
    }

    /// A duplicate of the connection, which hangs up when the back end dies.
    pub fn watch_socket(&self) -> Result<UnixStream, FsError> {
        self.socket
            .try_clone()
            .map_err(|source| FsError::Relay { source })
    }

    fn acked(&self, feature: VhostUserProtocolFeatures) -> bool {
        self.protocol.is_some_and(|acked| acked.contains(feature))
    }

    /// Gives the back end the driver's features, guest RAM and `rings`, and
    /// starts them.
    pub fn start(
        &mut self,
        memory: &GuestMemory,
        rings: &[Ring<'_>],
        acked_features: u64,
    ) -> Result<(), FsError> {
        if self.acked(VhostUserProtocolFeatures::REPLY_ACK) {
            // Only now: the back end acknowledges nothing before it has seen
            // SET_FEATURES with the protocol-features bit.
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let mut features = acked_features & self.device_features();
        if self.protocol.is_some() {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(vhost("SET_FEATURES"))?;
        self.frontend
            .set_mem_table(&memory_table(memory)?)
            .map_err(vhost("SET_MEM_TABLE"))?;
        for ring in rings {
            let index = ring.index;
            self.frontend
                .set_vring_num(index, ring.queue.size())
                .map_err(vhost("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(index, &ring_addresses(memory, index, ring.queue)?)
                .map_err(vhost("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, 0)
                .map_err(vhost("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(index, ring.call)
                .map_err(vhost("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, ring.kick)
                .map_err(vhost("SET_VRING_KICK"))?;
            // With protocol features, rings start disabled; without, the
            // back end enabled them on SET_FEATURES.
            if self.protocol.is_some() {
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(vhost("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops the rings at `indices` (GET_VRING_BASE) and, if the back end
    /// can, resets its device state. Tries every step and reports the first
    /// failure.
    pub fn stop(&mut self, indices: &[usize]) -> Result<(), FsError> {
        let mut first_error = None;
        for &index in indices {
            if let Err(err) = self.frontend.get_vring_base(index) {
                first_error.get_or_insert(FsError::Vhost {
                    step: "GET_VRING_BASE",
                    source: err,
                });
            }
        }
        if self.acked(VhostUserProtocolFeatures::RESET_DEVICE)
            && let Err(err) = self.frontend.reset_device()
        {
            first_error.get_or_insert(FsError::Vhost {
                step: "RESET_DEVICE",
                source: err,
            });
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn connect_socket(path: &Path) -> Result<UnixStream, FsError> {
    let mut retries = REFUSED_RETRIES;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused && retries > 0 => {
                retries -= 1;
                std::thread::sleep(REFUSED_BACKOFF);
            }
            Err(err) => {
                let path = path.to_owned();
                return Err(match err.kind() {
                    std::io::ErrorKind::NotFound => FsError::SocketMissing { path },
                    std::io::ErrorKind::ConnectionRefused => FsError::SocketRefused { path },
                    _ => FsError::Connect { path, source: err },
                });
            }
        }
    }
}

/// SET_MEM_TABLE's regions: each guest RAM region, where this process maps
/// it, and the memfd and offset the back end maps it from.
pub fn memory_table(memory: &GuestMemory) -> Result<Vec<VhostUserMemoryRegionInfo>, FsError> {
    memory
        .iter()
        .map(|region| {
            VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| FsError::Memory {
                reason: format!(
                    "the RAM region at {:#x} is not backed by a file the back end can map",
                    region.start_addr().raw_value()
                ),
            })
        })
        .collect()
}

/// SET_VRING_ADDR's addresses are this process's virtual addresses, not
/// guest addresses: the back end translates them through the memory table.
pub fn ring_addresses(
    memory: &GuestMemory,
    index: usize,
    queue: &Queue,
) -> Result<VringConfigData, FsError> {
    let translate = |part: &'static str, addr: u64| {
        memory
            .get_host_address(GuestAddress(addr))
            .map(|host| host as u64)
            .map_err(|_| FsError::QueueAddress {
                queue: index,
                part,
                addr,
            })
    };
    Ok(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: translate("descriptor table", queue.desc_table())?,
        used_ring_addr: translate("used ring", queue.used_ring())?,
        avail_ring_addr: translate("available ring", queue.avail_ring())?,
        log_addr: None,
    })
}
