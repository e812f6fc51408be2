//! The KVM VM and its vCPUs.

pub mod run_control;
pub mod threads;
pub mod vcpu;
pub mod vm;
