use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use hull_vmm::{Boot, VcpuExitReason, VmmConfig, VsockConfig};

/// The kernel command line every Hull guest gets; the virtio-mmio devices
/// are appended. A reset (`reboot=k`) ends the VM.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off";

#[derive(Debug, Parser)]
#[command(name = "hull-vmm", version, about = "Hull's microVM monitor")]
struct Cli {
    /// The guest kernel, an uncompressed vmlinux.
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// The guest's serial console is written here.
    #[arg(long)]
    console_log: PathBuf,
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Hybrid vsock: host clients connect here and send `CONNECT <port>\n`;
    /// the guest reaches host port P at `<PATH>_P`.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID (with --vsock-uds).
    #[arg(long, value_name = "N", default_value_t = 3, requires = "vsock_uds")]
    vsock_cid: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config = VmmConfig::new(
        cli.memory_mib,
        Boot::Linux {
            kernel: cli.kernel,
            initrd: cli.initrd,
            cmdline: cli.cmdline,
        },
        cli.console_log,
    );
    config.vsock = cli.vsock_uds.map(|uds_path| VsockConfig {
        guest_cid: cli.vsock_cid,
        uds_path,
    });
    let exit = hull_vmm::run(&config).context("running the VM")?;
    match exit {
        VcpuExitReason::Shutdown | VcpuExitReason::Halted => Ok(()),
        VcpuExitReason::Failed(reason) => anyhow::bail!("the guest failed: {reason}"),
    }
}
