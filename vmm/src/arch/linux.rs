//! Loads a vmlinux and its initrd and writes the boot_params the kernel's
//! 64-bit entry expects.

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{Cmdline, KernelLoader, elf::Elf, load_cmdline};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend as _};

use super::layout::*;
use crate::memory::{GuestMemory, MMIO_GAP_END, MMIO_GAP_START};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error("kernel {path}: {reason}")]
    Kernel { path: String, reason: String },
    #[error("initrd {path}: {reason}")]
    Initrd { path: String, reason: String },
    #[error("cmdline: {0}")]
    Cmdline(String),
    #[error("boot_params: {0}")]
    BootParams(String),
}

/// Loads the kernel, initrd and command line; returns the kernel's entry.
pub fn load(
    memory: &GuestMemory,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<GuestAddress, LinuxError> {
    let kernel_error = |reason: String| LinuxError::Kernel {
        path: kernel.display().to_string(),
        reason,
    };
    let mut image = File::open(kernel).map_err(|err| kernel_error(err.to_string()))?;
    let loaded = Elf::load(memory, None, &mut image, Some(GuestAddress(HIMEM_START)))
        .map_err(|err| kernel_error(format!("not a loadable vmlinux: {err}")))?;

    let mut command_line =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| LinuxError::Cmdline(e.to_string()))?;
    command_line
        .insert_str(cmdline)
        .map_err(|err| LinuxError::Cmdline(err.to_string()))?;
    load_cmdline(memory, GuestAddress(CMDLINE_START), &command_line)
        .map_err(|err| LinuxError::Cmdline(err.to_string()))?;

    let initrd = match initrd {
        Some(path) => Some(load_initrd(memory, path)?),
        None => None,
    };
    write_boot_params(memory, cmdline.len() + 1, initrd)?;
    Ok(loaded.kernel_load)
}

/// Puts the initrd at the top of low RAM, page aligned.
fn load_initrd(memory: &GuestMemory, path: &Path) -> Result<(GuestAddress, usize), LinuxError> {
    let fail = |reason: String| LinuxError::Initrd {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|err| fail(err.to_string()))?;
    let low_end = memory.last_addr().raw_value().min(MMIO_GAP_START - 1) + 1;
    let start = low_end
        .checked_sub(bytes.len() as u64)
        .map(|start| start & !0xfff)
        .filter(|&start| start > HIMEM_START)
        .ok_or_else(|| fail(format!("{} bytes do not fit in guest memory", bytes.len())))?;
    memory
        .write_slice(&bytes, GuestAddress(start))
        .map_err(|err| fail(err.to_string()))?;
    Ok((GuestAddress(start), bytes.len()))
}

fn write_boot_params(
    memory: &GuestMemory,
    cmdline_size: usize,
    initrd: Option<(GuestAddress, usize)>,
) -> Result<(), LinuxError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some((start, size)) = initrd {
        params.hdr.ramdisk_image = start.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let mut e820 = vec![(0, EBDA_START)];
    let end = memory.last_addr().raw_value() + 1;
    if end <= MMIO_GAP_START {
        e820.push((HIMEM_START, end - HIMEM_START));
    } else {
        e820.push((HIMEM_START, MMIO_GAP_START - HIMEM_START));
        e820.push((MMIO_GAP_END, end - MMIO_GAP_END));
    }
    for (index, (addr, size)) in e820.into_iter().enumerate() {
        params.e820_table[index] = boot_e820_entry {
            addr,
            size,
            r#type: E820_RAM,
        };
        params.e820_entries = index as u8 + 1;
    }
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        memory,
    )
    .map_err(|err| LinuxError::BootParams(err.to_string()))
}
