//! Legacy PC devices.

pub mod serial;

pub use serial::SerialDevice;
