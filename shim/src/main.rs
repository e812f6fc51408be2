//! `containerd-shim-hull-v2`: containerd's runtime `io.containerd.hull.v2`.

use hull_shim::shim::{HullShim, RUNTIME_ID, shim_config};

#[tokio::main]
async fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    hull_shim::logging::init(args.iter().all(|arg| arg != "start" && arg != "delete"));
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
