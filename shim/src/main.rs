//! `containerd-shim-hull-v2`: containerd's runtime `io.containerd.hull.v2`.

use std::fs::OpenOptions;
use std::sync::Mutex;

use hull_shim::shim::{HullShim, RUNTIME_ID, shim_config};

#[tokio::main]
async fn main() {
    init_logging();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.iter().any(|arg| arg == "start") {
        if let Err(err) = hull_shim::shim::start(&args[1..]).await {
            eprintln!("{RUNTIME_ID}: {err}");
            std::process::exit(1);
        }
        return;
    }
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(flags) => flags,
        Err(err) => {
            eprintln!("{RUNTIME_ID}: {err}");
            std::process::exit(1);
        }
    };
    if flags.action.is_empty() && !flags.info && !flags.version {
        if let Err(err) = hull_shim::serve::serve(flags).await {
            tracing::error!(%err, "serving");
            eprintln!("{RUNTIME_ID}: {err}");
            std::process::exit(1);
        }
        return;
    }
    // `delete`, `-info`, `-v`: the containerd-shim crate's own handling.
    containerd_shim::asynchronous::run::<HullShim>(RUNTIME_ID, Some(shim_config())).await;
}

/// The serving shim logs to the `log` FIFO containerd opened in the bundle
/// (it shows in containerd's log); `start` and `delete` log to stderr.
/// `HULL_SHIM_LOG` sets the filter (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HULL_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let serving = std::env::args().all(|arg| arg != "start" && arg != "delete");
    let fifo = serving
        .then(|| OpenOptions::new().write(true).open("log").ok())
        .flatten();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match fifo {
        Some(fifo) => builder.with_writer(Mutex::new(fifo)).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}
