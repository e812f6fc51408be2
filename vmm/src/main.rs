use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use hull_vmm::caps::RunAs;
use hull_vmm::jail::JailPaths;
use hull_vmm::{Boot, Confinement, FsConfig, NetConfig, VcpuExitReason, VmmConfig, VsockConfig};

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
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// The guest's serial console is written here.
    /// The default is standard output (through /proc, since a minimal /dev
    /// has no /dev/stdout).
    #[arg(long, default_value = "/proc/self/fd/1")]
    console_log: PathBuf,
    /// The control channel's Unix socket: state, boot timeline, pause,
    /// resume and stop, one JSON object per line.
    #[arg(long)]
    api_socket: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// A virtio-fs device served by the vhost-user back end (virtiofsd)
    /// listening on this socket.
    #[arg(long, value_name = "PATH")]
    fs_socket: Option<PathBuf>,
    /// The tag the guest mounts the virtio-fs device by.
    #[arg(
        long,
        value_name = "TAG",
        default_value = "hullfs",
        requires = "fs_socket"
    )]
    fs_tag: String,
    /// Hybrid vsock: host clients connect here and send `CONNECT <port>\n`;
    /// the guest reaches host port P at `<PATH>_P`.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID (with --vsock-uds).
    #[arg(long, value_name = "N", default_value_t = 3, requires = "vsock_uds")]
    vsock_cid: u64,
    /// A virtio-net device on a tap: `fd=N,mac=02:00:00:00:00:01[,mtu=1500]`,
    /// repeatable (one device each, in order). N is an fd inherited from
    /// the caller, opened on /dev/net/tun with TUNSETIFF flags
    /// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; hull-vmm sets its virtio-net header
    /// to 12 bytes (TUNSETVNETHDRSZ), turns its offloads off and makes it
    /// non-blocking. mac is the guest's, unicast; mtu (default 1500, at
    /// least 68) is what the guest is told to use.
    #[arg(long = "net", value_name = "SPEC", value_parser = clap::value_parser!(NetConfig))]
    net: Vec<NetConfig>,
    /// Do not install the seccomp filter (for debugging, e.g. under strace
    /// to find a system call the filter lacks). Capabilities are dropped
    /// all the same.
    #[arg(long)]
    no_seccomp: bool,
    /// Run in a PID and a mount namespace of its own, with DIR as the root
    /// (the kernel, the initrd, /dev/kvm and a /proc mounted in) and tight
    /// rlimits. The sockets and a console log file must be inside DIR. The
    /// started process stays outside, waits, and ends as the VMM ends.
    #[arg(long, value_name = "DIR")]
    jail: Option<PathBuf>,
    /// Once set up, continue as this user (not 0), with no supplementary
    /// groups: DIR is chowned to it so it can remove its sockets, and any
    /// `<vsock-uds>_P` socket the guest dials must let it connect.
    #[arg(long, value_name = "UID", requires_all = ["jail", "gid"])]
    uid: Option<u32>,
    /// The group for --uid (not 0).
    #[arg(long, value_name = "GID", requires = "uid")]
    gid: Option<u32>,
}

impl Cli {
    fn run_as(&self) -> Option<RunAs> {
        Some(RunAs {
            uid: self.uid?,
            gid: self.gid?,
        })
    }

    /// Moves into the jail, if asked, and takes the paths as seen from
    /// inside. Returns only in the process that runs the VM.
    fn enter_jail(mut self) -> anyhow::Result<Self> {
        let Some(root) = self.jail.take() else {
            return Ok(self);
        };
        let run_as = self.run_as();
        let inside = hull_vmm::jail::enter(
            &JailPaths {
                root,
                kernel: self.kernel,
                initrd: self.initrd,
                console_log: self.console_log,
                api_socket: self.api_socket,
                vsock_uds: self.vsock_uds,
                fs_socket: self.fs_socket,
            },
            run_as,
        )
        .context("entering the jail")?;
        self.kernel = inside.kernel;
        self.initrd = inside.initrd;
        self.console_log = inside.console_log;
        self.api_socket = inside.api_socket;
        self.vsock_uds = inside.vsock_uds;
        self.fs_socket = inside.fs_socket;
        Ok(self)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse().enter_jail()?;
    let run_as = cli.run_as();
    let mut config = VmmConfig::new(
        cli.memory_mib,
        Boot::Linux {
            kernel: cli.kernel,
            initrd: cli.initrd,
            cmdline: cli.cmdline,
        },
        cli.console_log,
    );
    config.api_socket = cli.api_socket;
    config.vcpus = cli.vcpus;
    config.fs = cli.fs_socket.map(|socket_path| FsConfig {
        tag: cli.fs_tag,
        socket_path,
    });
    config.net = cli.net;
    config.confinement = Confinement {
        drop_capabilities: true,
        seccomp: !cli.no_seccomp,
        run_as,
    };
    config.vsock = cli.vsock_uds.map(|uds_path| VsockConfig {
        guest_cid: cli.vsock_cid,
        uds_path,
    });
    let exit = hull_vmm::run(&config).context("running the VM")?;
    match exit {
        VcpuExitReason::Shutdown | VcpuExitReason::Halted | VcpuExitReason::Stopped => Ok(()),
        VcpuExitReason::Failed(reason) => anyhow::bail!("the guest failed: {reason}"),
    }
}
