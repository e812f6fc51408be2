use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hull_agent::reaper::Reaper;
use hull_agent::server::{self, Listen};
use hull_agent::service::{Agent, Config};
use hull_agent::{init, network, runtime, signals};
use hull_proto::v1::AGENT_VSOCK_PORT;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(name = "hull-agent", version, about = "The Hull guest agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the agent API (what PID 1 does by default).
    Serve {
        /// vsock:PORT or unix:PATH.
        #[arg(long, default_value_t = format!("vsock:{AGENT_VSOCK_PORT}"))]
        listen: String,
        /// Bundles, runtime state and sandbox files go here.
        #[arg(long, default_value = "/run/hull-agent")]
        state_dir: PathBuf,
        /// A cgroup2 mount.
        #[arg(long, default_value = "/sys/fs/cgroup")]
        cgroup_root: PathBuf,
    },
    /// Internal: run one libcontainer operation for the agent.
    #[command(hide = true)]
    RuntimeHelper,
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("HULL_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn main() -> anyhow::Result<()> {
    let pid1 = std::process::id() == 1;
    let command = Cli::parse().command;
    if let Some(Command::RuntimeHelper) = command {
        // libcontainer logs from the container's own processes after they
        // have taken the container's stdio as fds 0-2; logging to a
        // close-on-exec copy of the agent's stderr keeps those lines out of
        // the container's output.
        let log = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), 10)
            .context("duplicating stderr for the helper's log")?;
        let log = std::sync::Mutex::new(std::fs::File::from(log));
        tracing_subscriber::fmt()
            .with_env_filter(log_filter())
            .with_ansi(false)
            .with_writer(log)
            .init();
        signals::restore_default_sigpipe();
        return runtime::run_helper().context("runtime helper");
    }
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let (listen, state_dir, cgroup_root) = match command {
        Some(Command::Serve {
            listen,
            state_dir,
            cgroup_root,
        }) => (listen, state_dir, cgroup_root),
        _ => (
            format!("vsock:{AGENT_VSOCK_PORT}"),
            PathBuf::from("/run/hull-agent"),
            PathBuf::from("/sys/fs/cgroup"),
        ),
    };
    let listen: Listen = listen.parse()?;

    if pid1 {
        init::leave_initramfs().context("leaving the initramfs")?;
        init::setup().context("setting up the guest as PID 1")?;
    } else {
        // Container processes outlive the runtime helper that made them;
        // they must be re-parented to the agent, not to the host's init.
        nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    }

    let served = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")?
        .block_on(async {
            if pid1 {
                network::loopback_up().await.context("bringing up lo")?;
            }
            let reaper = Reaper::start().context("starting the reaper")?;
            let agent = Agent::new(
                Config {
                    state_dir,
                    cgroup_root,
                    pid1,
                },
                reaper,
            )?;
            let mut terminate = signal(SignalKind::terminate())?;
            let stopper = agent.clone();
            tokio::spawn(async move {
                if terminate.recv().await.is_some() {
                    tracing::info!("SIGTERM: shutting down");
                    let _ = stopper.destroy_sandbox().await;
                }
            });
            server::serve(agent, listen).await?;
            anyhow::Ok(())
        });
    if pid1 {
        if let Err(err) = &served {
            tracing::error!("{err:#}");
        }
        init::power_off();
    }
    served
}
