//! The Intel MultiProcessor Specification (1.4) table: how a guest without
//! ACPI tables learns its CPUs, the I/O APIC, and how ISA interrupts reach it.
//!
//! Linux looks for the floating pointer in the last KiB of base memory, so
//! the table goes at [`EBDA_START`], which the e820 map keeps reserved.

use vm_memory::{Bytes, GuestAddress};

use super::layout::EBDA_START;
use crate::memory::GuestMemory;

/// Where KVM's in-kernel local APICs and I/O APIC sit.
pub const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
pub const IO_APIC_DEFAULT_BASE: u32 = 0xfec0_0000;
/// KVM's I/O APIC has 24 pins, routed one to one to GSIs by default.
const IO_APIC_PINS: u8 = 24;
/// The largest table fits below 1 MiB, in the reserved legacy area.
pub const MAX_CPUS: u8 = 64;

const SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IO_APIC_VERSION: u8 = 0x11;
const ISA_BUS: u8 = 0;

/// Entry types.
const PROCESSOR: u8 = 0;
const BUS: u8 = 1;
const IO_APIC: u8 = 2;
const IO_INTERRUPT: u8 = 3;
const LOCAL_INTERRUPT: u8 = 4;

/// Interrupt types of the assignment entries.
const INT: u8 = 0;
const NMI: u8 = 1;
const EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6: what the guest sees from CPUID anyway; Linux only logs it.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present.
const CPU_FEATURES: u32 = 0x201;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("vcpus: {0} is not between 1 and {MAX_CPUS}")]
    Cpus(u8),
    #[error("writing the MP table into guest memory: {0}")]
    Memory(String),
}

/// The MP floating pointer followed by the configuration table for `cpus`
/// CPUs, as the bytes to place at `base`.
pub fn build(cpus: u8, base: u32) -> Result<Vec<u8>, MpTableError> {
    if !(1..=MAX_CPUS).contains(&cpus) {
        return Err(MpTableError::Cpus(cpus));
    }
    let io_apic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[BUS, ISA_BUS]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[IO_APIC, io_apic_id, IO_APIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_BASE.to_le_bytes());
    count += 1;
    for pin in 0..IO_APIC_PINS {
        // Polarity and trigger "conform to the bus" (flags 0).
        entries.extend_from_slice(&[IO_INTERRUPT, INT, 0, 0, ISA_BUS, pin, io_apic_id, pin]);
        count += 1;
    }
    // Every local APIC (0xff): LINT0 takes the PIC's ExtINT, LINT1 NMIs.
    for (kind, lint) in [(EXTINT, 0), (NMI, 1)] {
        entries.extend_from_slice(&[LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS, 0, 0xff, lint]);
        count += 1;
    }

    const FLOATING_LEN: u32 = 16;
    const HEADER_LEN: usize = 44;
    let table_len =
        u16::try_from(HEADER_LEN + entries.len()).map_err(|_| MpTableError::Cpus(cpus))?;
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[SPEC_REVISION, 0]); // checksum, patched below
    table.extend_from_slice(b"HULL    ");
    table.extend_from_slice(b"HULL-VMM    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // no extended table
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN as usize);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(base + FLOATING_LEN).to_le_bytes());
    // Length in 16-byte units, revision, checksum (patched), and feature
    // bytes that say "the configuration table is present".
    floating.extend_from_slice(&[1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, byte| sum.wrapping_add(*byte))
        .wrapping_neg()
}

/// Writes the table for `cpus` CPUs into guest memory.
pub fn setup(memory: &GuestMemory, cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(cpus, EBDA_START as u32)?;
    memory
        .write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|err| MpTableError::Memory(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
    }

    #[test]
    fn the_table_checks_out_and_lists_every_cpu() {
        let bytes = build(4, 0x9fc00).expect("table");
        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(sum(&bytes[..16]), 0, "floating pointer checksum");
        let pointer = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(pointer, 0x9fc10);
        let table = &bytes[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0, "table checksum");
        let count = u16::from_le_bytes([table[34], table[35]]);
        // 4 CPUs, the bus, the I/O APIC, 24 pins, LINT0 and LINT1.
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        let processors: Vec<(u8, u8)> = table[44..]
            .chunks(20)
            .take(4)
            .map(|entry| (entry[1], entry[3]))
            .collect();
        assert_eq!(
            processors,
            [
                (0, CPU_ENABLED | CPU_BOOTSTRAP),
                (1, CPU_ENABLED),
                (2, CPU_ENABLED),
                (3, CPU_ENABLED)
            ]
        );
    }

    #[test]
    fn the_largest_table_stays_below_one_mib() {
        let bytes = build(MAX_CPUS, EBDA_START as u32).expect("table");
        assert!(EBDA_START + bytes.len() as u64 <= 0x10_0000);
        assert!(matches!(build(0, 0), Err(MpTableError::Cpus(0))));
        assert!(matches!(build(MAX_CPUS + 1, 0), Err(MpTableError::Cpus(_))));
    }
}
