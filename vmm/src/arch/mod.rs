//! x86_64: where things go in guest memory, loading Linux, and the vCPU
//! state it starts in.

pub mod layout;
pub mod linux;
pub mod regs;
