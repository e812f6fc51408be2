//! The guest physical memory layout for a Linux boot.

/// The GDT the vCPU starts with.
pub const GDT_START: u64 = 0x500;
/// The boot_params ("zero page") the kernel reads.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The stack the vCPU starts with.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for the first GiB: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Where the EBDA would start on a PC: RAM below it is usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// The kernel goes at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// KVM needs three pages for the TSS, out of the guest's way below 4 GiB.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
