//! The KVM VM: its file descriptor and guest memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion, MemoryRegionAddress};

use crate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("opening /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("creating the VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("registering guest memory slot {slot}: {source}")]
    Memory {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory region {0} has no host mapping")]
    Unmapped(u32),
}

#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    /// Held for as long as KVM may access it: the slots point into it.
    memory: GuestMemory,
}

impl Vm {
    /// Creates a VM with `memory` as its RAM.
    pub fn new(memory: GuestMemory) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let vm = Self { kvm, fd, memory };
        vm.register_memory()?;
        Ok(vm)
    }

    fn register_memory(&self) -> Result<(), VmError> {
        for (slot, region) in self.memory.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| VmError::Unmapped(slot))?;
            let memory_region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `region.len()` bytes
            // owned by `self.memory`, which the VM holds until it is dropped,
            // so KVM never sees the mapping go away under a running guest.
            unsafe { self.fd.set_user_memory_region(memory_region) }
                .map_err(|source| VmError::Memory { slot, source })?;
        }
        Ok(())
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }
}
