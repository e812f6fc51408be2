//! The vCPU state Linux's 64-bit entry expects: long mode with the first GiB
//! identity-mapped, a flat GDT, the stack and boot_params pointer in place,
//! CPUID from KVM, and the local APIC wired for the legacy PIC.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::layout::*;
use crate::memory::GuestMemory;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const CPUID_ECX_HYPERVISOR: u32 = 31;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("writing {0} into guest memory")]
    Memory(&'static str),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// A GDT entry from its flags, base and limit, in the CPU's packed format.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The same entry as KVM's segment register state.
fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let limit = ((entry >> 32) & 0x000f_0000) | (entry & 0x0000_ffff);
    let granularity = (entry >> 55) & 1;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granularity == 1 {
            ((limit as u32) << 12) | 0xfff
        } else {
            limit as u32
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity as u8,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from((entry >> 47) & 1 == 0),
    }
}

/// Sets up vCPU `id` to enter the kernel at `entry` in long mode.
pub fn setup_long_mode(
    kvm_handle: &Kvm,
    vcpu: &VcpuFd,
    memory: &GuestMemory,
    entry: GuestAddress,
    id: u8,
) -> Result<(), RegsError> {
    setup_cpuid(kvm_handle, vcpu, id)?;

    // Flat segments: code (64-bit), data, and a TSS.
    let gdt = [
        gdt_entry(0, 0, 0),
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ];
    for (index, entry) in gdt.iter().enumerate() {
        memory
            .write_obj(*entry, GuestAddress(GDT_START + index as u64 * 8))
            .map_err(|_| RegsError::Memory("the GDT"))?;
    }

    // Identity-map the first GiB with 2 MiB pages.
    let write = |value: u64, at: u64, what| {
        memory
            .write_obj(value, GuestAddress(at))
            .map_err(|_| RegsError::Memory(what))
    };
    write(PDPTE_START | 0x03, PML4_START, "the PML4")?;
    write(PDE_START | 0x03, PDPTE_START, "the PDPT")?;
    for page in 0..512u64 {
        write(
            (page << 21) | 0x83,
            PDE_START + page * 8,
            "the page directory",
        )?;
    }

    let mut sregs = vcpu.get_sregs().map_err(kvm("reading sregs"))?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(gdt[3], 3);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("setting sregs"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("setting regs"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("setting the FPU"))?;
    wire_lapic_for_pic(vcpu)
}

/// Sets up an application processor: it waits in KVM for the kernel's
/// INIT/SIPI, and needs only its CPUID and local APIC wiring until then.
pub fn setup_application_processor(
    kvm_handle: &Kvm,
    vcpu: &VcpuFd,
    id: u8,
) -> Result<(), RegsError> {
    setup_cpuid(kvm_handle, vcpu, id)?;
    wire_lapic_for_pic(vcpu)
}

/// CPUID as KVM supports it on this host, the hypervisor leaves unchanged
/// (KVM's signature and features, which PVM guests rely on), with this
/// vCPU's APIC ID and the hypervisor bit in leaf 1.
fn setup_cpuid(kvm_handle: &Kvm, vcpu: &VcpuFd, id: u8) -> Result<(), RegsError> {
    let mut cpuid: CpuId = kvm_handle
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("reading the supported CPUID"))?;
    for entry in cpuid.as_mut_slice() {
        if entry.function == 1 {
            entry.ebx = (entry.ebx & 0x00ff_ffff) | (u32::from(id) << 24);
            // KVM leaves the "running under a hypervisor" bit to the VMM.
            // Without it the guest ignores the KVM leaves, has no kvmclock,
            // and must calibrate its TSC against the PIT.
            entry.ecx |= 1 << CPUID_ECX_HYPERVISOR;
        }
        // The x2APIC ID in the topology leaf must match the APIC ID.
        if entry.function == 0xb {
            entry.edx = u32::from(id);
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm("setting CPUID"))
}

/// Virtual-wire mode: LINT0 delivers the PIC's interrupts (ExtINT) and LINT1
/// NMIs, as a PC BIOS leaves it.
fn wire_lapic_for_pic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const LVT0: usize = 0x350;
    const LVT1: usize = 0x360;
    const EXTINT: u32 = 7;
    const NMI: u32 = 4;
    let mut lapic = vcpu.get_lapic().map_err(kvm("reading the LAPIC"))?;
    for (offset, mode) in [(LVT0, EXTINT), (LVT1, NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
            lapic.regs[offset + i] = byte as i8;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("setting the LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip_to_kvm_segments() {
        let code = kvm_segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (code.selector, code.type_, code.l, code.g, code.present),
            (8, 0xb, 1, 1, 1)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let data = kvm_segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.selector, data.type_, data.db, data.s), (16, 3, 1, 1));
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }
}
