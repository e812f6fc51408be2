//! The shim's log: to containerd's `log` FIFO when serving, to stderr for
//! `start` and `delete`. The level is the config file's `log_level`, unless
//! `HULL_SHIM_LOG` (an env filter) overrides it.

use std::fs::OpenOptions;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

const ENV: &str = "HULL_SHIM_LOG";

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

pub fn init(serving: bool) {
    let filter = EnvFilter::try_from_env(ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fifo = serving
        .then(|| OpenOptions::new().write(true).open("log").ok())
        .flatten();
    let format = tracing_subscriber::fmt::layer().with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match fifo {
        Some(fifo) => registry
            .with(format.with_writer(Mutex::new(fifo)))
            .try_init(),
        None => registry
            .with(format.with_writer(std::io::stderr))
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Applies the configured level, unless the environment chose one.
pub fn set_level(level: &str) {
    if std::env::var_os(ENV).is_some() {
        return;
    }
    if let Some(handle) = FILTER.get()
        && let Err(err) = handle.reload(EnvFilter::new(level))
    {
        tracing::warn!(%err, level, "setting the log level");
    }
}
