//! Just enough of the PC keyboard controller for a guest to reset the
//! machine: command 0xfe on port 0x64 pulses the CPU reset line, which ends
//! the VM (Linux's `reboot=k`, what the agent's power-off uses).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::devices::BusDevice;

/// The controller's ports: 0x60 data, 0x64 command/status.
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORTS: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

#[derive(Debug)]
pub struct I8042 {
    reset: Arc<AtomicBool>,
}

impl I8042 {
    /// `reset` becomes true when the guest resets the machine.
    pub fn new(reset: Arc<AtomicBool>) -> Self {
        Self { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        // No keyboard: no data, input and output buffers empty.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.reset.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_0xfe_resets_and_nothing_else_does() {
        let reset = Arc::new(AtomicBool::new(false));
        let mut i8042 = I8042::new(Arc::clone(&reset));
        i8042.write(0, &[0xfe]);
        i8042.write(COMMAND_OFFSET, &[0xd1]);
        assert!(!reset.load(Ordering::SeqCst));
        i8042.write(COMMAND_OFFSET, &[0xfe]);
        assert!(reset.load(Ordering::SeqCst));
    }
}
