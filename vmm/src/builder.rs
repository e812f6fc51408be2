//! Builds a VM from a [`VmmConfig`] and runs it, one step after another.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::Bus;
use crate::devices::bus::Overlap;
use crate::devices::legacy::SerialDevice;
use crate::devices::legacy::serial::{COM1_PORT, COM1_PORTS};
use crate::devices::virtio::mmio::{MMIO_LEN, MmioTransport};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::memory::{self, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuExitReason};
use crate::vstate::vm::{Vm, VmError};

/// Where the first virtio-mmio device's registers are; the next ones follow
/// every [`MMIO_LEN`] bytes, in the MMIO gap below 4 GiB.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;

/// What the guest starts from.
#[derive(Debug, Clone)]
pub enum Boot {
    /// A freestanding flat image, loaded at `entry` and started in real mode
    /// there. This is how the device tests' tiny guests run.
    RealMode { image: PathBuf, entry: u16 },
}

#[derive(Debug, Clone)]
pub struct VmmConfig {
    pub memory_mib: u32,
    pub boot: Boot,
    /// The serial console is written here.
    pub console_log: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Bus(#[from] Overlap),
    #[error("{field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// Builds the VM and runs its vCPU until the guest stops.
pub fn run(config: &VmmConfig) -> Result<VcpuExitReason, BuildError> {
    // 1. Guest memory, in a memfd.
    let (memory, _memfd) = memory::create(config.memory_mib)?;

    // 2. The KVM VM over that memory.
    let vm = Vm::new(memory)?;

    // 3. The guest image.
    let entry = match &config.boot {
        Boot::RealMode { image, entry } => {
            let bytes =
                std::fs::read(image).map_err(io(format!("boot.image {}", image.display())))?;
            let end = usize::from(*entry) + bytes.len();
            if end > 0xa_0000 {
                return Err(BuildError::Config {
                    field: "boot.image",
                    reason: format!(
                        "{} bytes at {entry:#x} do not fit below 640 KiB",
                        bytes.len()
                    ),
                });
            }
            vm.memory()
                .write_slice(&bytes, GuestAddress(u64::from(*entry)))
                .map_err(|err| BuildError::Config {
                    field: "boot.image",
                    reason: err.to_string(),
                })?;
            *entry
        }
    };

    // 4. Devices on their buses.
    let mut pio = Bus::default();
    let mut mmio = Bus::default();
    let console = File::create(&config.console_log)
        .map_err(io(format!("console_log {}", config.console_log.display())))?;
    let serial_interrupt = EventFd::new(EFD_NONBLOCK).map_err(io("serial interrupt eventfd"))?;
    let serial = SerialDevice::new(serial_interrupt, Box::new(console));
    pio.insert(
        "serial",
        COM1_PORT,
        COM1_PORTS,
        Arc::new(Mutex::new(serial)),
    )?;
    let virtio_devices: Vec<(&'static str, Box<dyn VirtioDevice>)> = vec![(
        "virtio-rng",
        Box::new(Rng::new().map_err(io("opening /dev/urandom"))?),
    )];
    for (index, (name, device)) in virtio_devices.into_iter().enumerate() {
        let interrupt =
            Interrupt::new(EventFd::new(EFD_NONBLOCK).map_err(io("virtio interrupt eventfd"))?);
        let transport = MmioTransport::new(device, vm.memory().clone(), interrupt);
        let base = VIRTIO_MMIO_BASE + index as u64 * MMIO_LEN;
        mmio.insert(name, base, MMIO_LEN, Arc::new(Mutex::new(transport)))?;
    }

    // 5. The vCPU, at the entry point.
    let mut vcpu = Vcpu::new(&vm, 0)?;
    vcpu.set_real_mode_entry(entry)?;

    // 6. Run.
    Ok(vcpu.run(&pio, &mmio)?)
}
