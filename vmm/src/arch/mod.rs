//! x86_64: where things go in guest memory, loading Linux, the MP table
//! that describes the CPUs and interrupt routing, and the vCPU state it
//! starts in.

pub mod layout;
pub mod linux;
pub mod mptable;
pub mod regs;
