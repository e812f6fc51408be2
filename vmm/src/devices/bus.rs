//! An address space (I/O ports or MMIO) divided among devices.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A device on a bus. Offsets are relative to the device's base address.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
#[error("{name} at {base:#x}+{len:#x} overlaps a device already on the bus")]
pub struct Overlap {
    pub name: &'static str,
    pub base: u64,
    pub len: u64,
}

struct Entry {
    base: u64,
    len: u64,
    name: &'static str,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A bus. Accesses to addresses where no device sits read as all ones and
/// are otherwise ignored, as on real hardware; they are logged at a limited
/// rate, since a guest can make as many as it likes.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
    unclaimed: Mutex<RateLimit>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (e.name, e.base, e.len)))
            .finish()
    }
}

impl Bus {
    pub fn insert(
        &mut self,
        name: &'static str,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), Overlap> {
        let end = base.saturating_add(len);
        if len == 0
            || self
                .entries
                .iter()
                .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(Overlap { name, base, len });
        }
        self.entries.push(Entry {
            base,
            len,
            name,
            device,
        });
        Ok(())
    }

    fn find(&self, address: u64) -> Option<(&Entry, u64)> {
        self.entries
            .iter()
            .find(|e| address >= e.base && address - e.base < e.len)
            .map(|e| (e, address - e.base))
    }

    pub fn read(&self, address: u64, data: &mut [u8]) {
        match self.find(address) {
            Some((entry, offset)) => entry
                .device
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .read(offset, data),
            None => {
                data.fill(0xff);
                self.log_unclaimed("read", address);
            }
        }
    }

    pub fn write(&self, address: u64, data: &[u8]) {
        match self.find(address) {
            Some((entry, offset)) => entry
                .device
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write(offset, data),
            None => self.log_unclaimed("write", address),
        }
    }

    fn log_unclaimed(&self, access: &str, address: u64) {
        let mut limit = self
            .unclaimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if limit.allow() {
            tracing::debug!(
                access,
                address = format_args!("{address:#x}"),
                "no device at address"
            );
        }
    }
}

/// At most [`RateLimit::PER_SECOND`] events a second: for logging what a
/// guest can make happen as often as it likes.
#[derive(Debug)]
pub(crate) struct RateLimit {
    window: Instant,
    count: u32,
}

impl RateLimit {
    const PER_SECOND: u32 = 10;

    pub(crate) fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.count = 0;
        }
        self.count += 1;
        self.count <= Self::PER_SECOND
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            window: Instant::now(),
            count: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Register(u8);

    impl BusDevice for Register {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = self.0.wrapping_add(offset as u8);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_address_and_refuses_overlaps() {
        let mut bus = Bus::default();
        bus.insert("a", 0x3f8, 8, Arc::new(Mutex::new(Register(0))))
            .expect("insert");
        assert!(
            bus.insert("b", 0x3fc, 8, Arc::new(Mutex::new(Register(0))))
                .is_err()
        );
        bus.write(0x3f8, &[40]);
        let mut data = [0u8];
        bus.read(0x3fa, &mut data);
        assert_eq!(data, [42]);
        bus.read(0x80, &mut data);
        assert_eq!(data, [0xff]);
    }

    #[test]
    fn the_log_of_unclaimed_accesses_is_rate_limited() {
        let mut limit = RateLimit::default();
        let allowed = (0..100).filter(|_| limit.allow()).count();
        assert_eq!(allowed, RateLimit::PER_SECOND as usize);
    }
}
