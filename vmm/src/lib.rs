//! `hull-vmm`: Hull's microVM monitor, on rust-vmm crates.
//!
//! Laid out like Firecracker's `src/vmm`: guest memory in [`memory`], the KVM
//! VM and its vCPUs in [`vstate`], one folder per device under [`devices`],
//! and [`builder`] putting them together in one linear sequence. It depends on
//! neither tokio nor the shim.
//!
//! So far it runs freestanding guests from a flat image with a 16550 serial
//! console; the Linux boot path and the virtio-mmio devices come next.

pub mod arch;
pub mod builder;
pub mod devices;
pub mod memory;
pub mod vstate;

pub use builder::{Boot, BuildError, FsConfig, VIRTIO_MMIO_BASE, VmmConfig, VsockConfig, run};
pub use vstate::vcpu::VcpuExitReason;
