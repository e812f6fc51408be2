//! One vCPU and its run loop.

use std::sync::atomic::{AtomicBool, Ordering};

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::run_control::{Next, RunControl};
use super::vm::Vm;
use crate::devices::Bus;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("creating vCPU {id}: {source}")]
    Create {
        id: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("setting up vCPU registers: {0}")]
    Registers(#[source] kvm_ioctls::Error),
    #[error("running the vCPU: {0}")]
    Run(#[source] kvm_ioctls::Error),
}

/// Why a vCPU stopped running guest code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExitReason {
    /// The guest executed HLT with nothing to wake it.
    Halted,
    /// A triple fault or a reset: the guest's way of ending the VM.
    Shutdown,
    /// KVM could not run or emulate the guest; the string says why.
    Failed(String),
    /// The host asked the VM to stop (or another vCPU ended it).
    Stopped,
}

/// What a vCPU's run loop works with, shared by every vCPU.
#[derive(Debug)]
pub struct RunContext<'a> {
    pub pio: &'a Bus,
    pub mmio: &'a Bus,
    /// Set by a device that resets the machine.
    pub reset: &'a AtomicBool,
    pub control: &'a RunControl,
}

#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u64) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(id)
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Self { fd })
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Starts the vCPU in real mode at physical address `entry` (below 64 KiB).
    pub fn set_real_mode_entry(&self, entry: u16) -> Result<(), VcpuError> {
        let mut sregs = self.fd.get_sregs().map_err(VcpuError::Registers)?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        self.fd.set_sregs(&sregs).map_err(VcpuError::Registers)?;
        let mut regs = self.fd.get_regs().map_err(VcpuError::Registers)?;
        regs.rip = u64::from(entry);
        // Bit 1 of RFLAGS is reserved and always set.
        regs.rflags = 0x2;
        self.fd.set_regs(&regs).map_err(VcpuError::Registers)?;
        Ok(())
    }

    /// Runs guest code until the vCPU stops, routing port I/O and MMIO. A
    /// device that resets the machine sets `reset`, which ends the run; the
    /// run control pauses it or stops it between two entries into the guest.
    pub fn run(&mut self, context: &RunContext<'_>) -> Result<VcpuExitReason, VcpuError> {
        let RunContext {
            pio,
            mmio,
            reset,
            control,
        } = *context;
        loop {
            if control.before_entry() == Next::Exit {
                return Ok(VcpuExitReason::Stopped);
            }
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    pio.write(u64::from(port), data);
                    if reset.load(Ordering::SeqCst) {
                        return Ok(VcpuExitReason::Shutdown);
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) => pio.read(u64::from(port), data),
                Ok(VcpuExit::MmioRead(address, data)) => mmio.read(address, data),
                Ok(VcpuExit::MmioWrite(address, data)) => mmio.write(address, data),
                Ok(VcpuExit::Hlt) => return Ok(VcpuExitReason::Halted),
                Ok(VcpuExit::Shutdown) => return Ok(VcpuExitReason::Shutdown),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Ok(VcpuExitReason::Failed(format!(
                        "entry failed: hardware reason {reason:#x} on CPU {cpu}"
                    )));
                }
                Ok(VcpuExit::InternalError) => {
                    return Ok(VcpuExitReason::Failed(
                        "KVM internal error (emulation failure)".into(),
                    ));
                }
                Ok(other) => {
                    return Ok(VcpuExitReason::Failed(format!("unhandled exit {other:?}")));
                }
                // A kick from the run control: look at it before re-entering.
                Err(err) if err.errno() == libc_eintr() => continue,
                // An application processor woke from its wait for SIPI:
                // KVM wants the run retried.
                Err(err) if err.errno() == nix::errno::Errno::EAGAIN as i32 => continue,
                Err(err) => return Err(VcpuError::Run(err)),
            }
        }
    }
}

fn libc_eintr() -> i32 {
    nix::errno::Errno::EINTR as i32
}
