//! The configuration, which lives in `hull-config` so that the `hull` CLI
//! reads it without the shim; its errors become the shim's
//! (InvalidArgument, naming the field).

pub use hull_config::*;

use crate::error::ShimError;

impl From<ConfigError> for ShimError {
    fn from(err: ConfigError) -> Self {
        match err {
            ConfigError::Invalid { field, reason } => ShimError::InvalidArgument { field, reason },
            ConfigError::Io { context, source } => ShimError::Io { context, source },
        }
    }
}
