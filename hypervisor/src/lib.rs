//! A pod's virtual machine, as the shim sees it: start one from a kernel, an
//! initrd, vCPUs, memory and a shared directory; reach a guest vsock port as
//! a byte stream; stop it and leave nothing behind.
//!
//! Two backends ([`backend`] picks one): `hull`, Hull's own VMM, wherever
//! KVM has hardware virtualization, and QEMU (`-machine microvm`) otherwise.
//! Both share `virtiofsd` for the shared directory and speak hybrid vsock:
//! the host connects to a Unix socket and writes `CONNECT <port>\n` (QEMU
//! through `vhost-device-vsock`, hull-vmm by itself). [`host`] says what the
//! host's KVM can do.

pub mod backend;
pub mod cgroup;
pub mod confine;
pub mod console;
pub mod error;
pub mod host;
pub mod hull;
pub mod leftovers;
pub mod net;
pub mod process;
pub mod qemu;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod timeline;
mod virtiofsd;
pub mod vm;
pub mod vsock;
mod work_dir;

pub use backend::{Backend, BackendKind};
pub use error::VmError;
pub use hull::HullVmm;
pub use net::NetDevice;
pub use qemu::Qemu;
pub use timeline::Timeline;
pub use vm::Vm;

use std::path::PathBuf;

/// Everything a sandbox VM is started from.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Exported to the guest through virtio-fs with tag [`SHARED_FS_TAG`].
    pub shared_dir: PathBuf,
    /// The guest's serial console is copied here.
    pub console_log: PathBuf,
    /// Sockets of the VM's helpers go here. Unix socket paths are limited to
    /// 108 bytes, so keep it short.
    pub work_dir: PathBuf,
    /// The pod's network interfaces, a virtio-net device each; none gives
    /// the guest only loopback.
    pub net: Vec<NetDevice>,
    /// The host vsock port the guest's agent dials once it listens; the
    /// host connects to the agent only after that call (see
    /// [`Vm::wait_for_agent`]).
    pub agent_ready_port: u32,
}

/// The virtio-fs tag under which the guest mounts the shared directory.
pub const SHARED_FS_TAG: &str = "hullfs";

impl VmConfig {
    /// Checks the fields before anything is started.
    pub fn validate(&self) -> Result<(), VmError> {
        for (field, path) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if !path.is_file() {
                return Err(VmError::Config {
                    field,
                    reason: format!("{} does not exist", path.display()),
                });
            }
        }
        if !self.shared_dir.is_dir() {
            return Err(VmError::Config {
                field: "shared_dir",
                reason: format!("{} is not a directory", self.shared_dir.display()),
            });
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(VmError::Config {
                field: "vcpus",
                reason: format!("{} is not between 1 and 64", self.vcpus),
            });
        }
        if !(64..=65536).contains(&self.memory_mib) {
            return Err(VmError::Config {
                field: "memory_mib",
                reason: format!("{} is not between 64 and 65536", self.memory_mib),
            });
        }
        for (index, device) in self.net.iter().enumerate() {
            device.validate(index)?;
        }
        // 0 is reserved, u32::MAX is VMADDR_PORT_ANY.
        if self.agent_ready_port == 0 || self.agent_ready_port == u32::MAX {
            return Err(VmError::Config {
                field: "agent_ready_port",
                reason: format!("{} is not a vsock port one can dial", self.agent_ready_port),
            });
        }
        Ok(())
    }
}
