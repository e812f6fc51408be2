//! `hull-vmm`: Hull's microVM monitor, on rust-vmm crates.
//!
//! Laid out like Firecracker's `src/vmm`: guest memory in [`memory`], the KVM
//! VM and its vCPUs in [`vstate`], one folder per device under [`devices`],
//! and [`builder`] putting them together in one linear sequence. It depends on
//! neither tokio nor the shim.
//!
//! The process that starts it (the shim) drives it through [`control`]:
//! state, boot timeline, pause, resume and stop.

pub mod arch;
pub mod builder;
pub mod caps;
pub mod control;
pub mod devices;
pub mod jail;
pub mod memory;
pub mod seccomp;
pub mod timeline;
pub mod vstate;

pub use builder::{
    Boot, BuildError, Confinement, FsConfig, VIRTIO_MMIO_BASE, VmmConfig, VsockConfig, run,
};
pub use devices::virtio::net::NetConfig;
pub use timeline::BootTimeline;
pub use vstate::run_control::RunState;
pub use vstate::vcpu::VcpuExitReason;
