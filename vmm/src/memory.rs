//! Guest RAM, backed by a memfd so that vhost-user back ends (virtiofsd) can
//! map the same pages.

use std::fs::File;

use nix::sys::memfd::{MemFdCreateFlag, memfd_create};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

pub type GuestMemory = GuestMemoryMmap<()>;

/// x86 puts the IOAPIC, LAPIC and MMIO devices in the 768 MiB below 4 GiB;
/// RAM that would overlap moves above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memory_mib: {0} is not between 1 and 1048576")]
    Size(u32),
    #[error("creating the guest RAM memfd: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("mapping guest RAM: {0}")]
    Map(String),
}

/// The (guest address, length) ranges of `size` bytes of RAM.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Creates `memory_mib` MiB of guest RAM in one memfd, and returns the
/// mapping and the memfd (to hand to vhost-user back ends).
pub fn create(memory_mib: u32) -> Result<(GuestMemory, File), MemoryError> {
    if !(1..=1_048_576).contains(&memory_mib) {
        return Err(MemoryError::Size(memory_mib));
    }
    let size = u64::from(memory_mib) << 20;
    let memfd = memfd_create(c"hull-guest-ram", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|errno| MemoryError::Memfd(errno.into()))?;
    let file = File::from(memfd);
    file.set_len(size).map_err(MemoryError::Memfd)?;
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (start, length) in ram_ranges(size) {
        let file = file.try_clone().map_err(MemoryError::Memfd)?;
        regions.push((start, length as usize, Some(FileOffset::new(file, offset))));
        offset += length;
    }
    let memory = GuestMemoryMmap::from_ranges_with_files(regions)
        .map_err(|err| MemoryError::Map(err.to_string()))?;
    Ok((memory, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend as _};

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            ranges[1],
            (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
        );
    }

    #[test]
    fn guest_ram_is_one_shared_memfd() {
        let (memory, file) = create(2).expect("memory");
        assert_eq!(file.metadata().expect("stat").len(), 2 << 20);
        memory
            .write_obj(0xabcd_u32, GuestAddress(0x1000))
            .expect("write");
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(0x1000)).expect("read"),
            0xabcd
        );
        assert_eq!(memory.num_regions(), 1);
        assert!(matches!(create(0), Err(MemoryError::Size(0))));
    }
}
