//! The 16550A UART at COM1 (I/O port 0x3f8), from `vm-superio`: the guest's
//! console, written to the console log.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

/// COM1's base port and register count.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORTS: u64 = 8;

/// Raises the UART's interrupt through an eventfd (an irqfd once the VM has
/// an interrupt controller).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    pub fn new(interrupt: EventFd, output: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(EventFdTrigger(interrupt), output),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(byte), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *byte = self.serial.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&byte), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            // A full or failing log must not stop the guest; the UART has no
            // way to report it anyway.
            if let Err(err) = self.serial.write(offset, byte) {
                tracing::debug!(?err, "serial write");
            }
        }
    }
}
