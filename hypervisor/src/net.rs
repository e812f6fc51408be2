//! A pod network interface as the VMM gets it: an open tap and the MAC and
//! MTU of the interface it mirrors.
//!
//! The tap is opened by the caller (the shim, inside the pod's network
//! namespace) with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, and handed to the
//! VMM as an inherited descriptor: the VMM runs in the host's namespace, where
//! the tap's name means nothing.

use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;

use command_fds::{CommandFdExt, FdMapping};

use crate::VmError;

/// The first descriptor number the VMM finds its taps at; the next ones
/// follow.
pub const FIRST_TAP_FD: i32 = 3;

#[derive(Debug, Clone)]
pub struct NetDevice {
    pub tap: Arc<OwnedFd>,
    pub mac: [u8; 6],
    pub mtu: u32,
}

impl NetDevice {
    pub fn mac_text(&self) -> String {
        self.mac
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    pub(crate) fn validate(&self, index: usize) -> Result<(), VmError> {
        if self.mac[0] & 1 == 1 || self.mac == [0; 6] {
            return Err(VmError::Config {
                field: "net.mac",
                reason: format!("net[{index}]: {} is not a unicast MAC", self.mac_text()),
            });
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(VmError::Config {
                field: "net.mtu",
                reason: format!("net[{index}]: {} is not between 68 and 65535", self.mtu),
            });
        }
        Ok(())
    }
}

/// Makes the taps of `devices` the descriptors [`FIRST_TAP_FD`], … of the
/// process `command` starts, and returns those numbers.
pub(crate) fn pass_taps(command: &mut Command, devices: &[NetDevice]) -> Result<Vec<i32>, VmError> {
    let mut mappings = Vec::new();
    let mut numbers = Vec::new();
    for (offset, device) in devices.iter().enumerate() {
        let child_fd = FIRST_TAP_FD + offset as i32;
        let parent_fd = device
            .tap
            .as_fd()
            .try_clone_to_owned()
            .map_err(|err| VmError::io("duplicating a tap descriptor", err))?;
        mappings.push(FdMapping {
            parent_fd,
            child_fd,
        });
        numbers.push(child_fd);
    }
    command
        .fd_mappings(mappings)
        .map_err(|err| VmError::io("passing the taps", std::io::Error::other(err.to_string())))?;
    Ok(numbers)
}
