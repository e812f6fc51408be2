//! Legacy PC devices.

pub mod console_log;
pub mod i8042;
pub mod serial;

pub use console_log::ConsoleLog;
pub use i8042::I8042;
pub use serial::SerialDevice;
