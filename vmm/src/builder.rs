//! Builds a VM from a [`VmmConfig`] and runs it, one step after another.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::caps::CapsError;
use crate::control::{BoundControl, VcpuKicker};
use crate::devices::Bus;
use crate::devices::bus::Overlap;
use crate::devices::legacy::i8042::{I8042_PORT, I8042_PORTS};
use crate::devices::legacy::serial::{COM1_PORT, COM1_PORTS};
use crate::devices::legacy::{ConsoleLog, I8042, SerialDevice};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{MMIO_LEN, MmioTransport};
use crate::devices::virtio::net::{Net, NetConfig, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::memory::{self, MemoryError};
use crate::seccomp::SeccompError;
use crate::timeline::TimelineRecorder;
use crate::vstate::run_control::RunControl;
use crate::vstate::threads::{VcpuResult, VcpuThreads, install_kick_handler};
use crate::vstate::vcpu::{RunContext, Vcpu, VcpuError, VcpuExitReason};
use crate::vstate::vm::{Vm, VmError};

/// Where the first virtio-mmio device's registers are; the next ones follow
/// every [`MMIO_LEN`] bytes, in the MMIO gap below 4 GiB.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;

/// What the guest starts from.
#[derive(Debug, Clone)]
pub enum Boot {
    /// A freestanding flat image, loaded at `entry` and started in real mode
    /// there. This is how the device tests' tiny guests run.
    RealMode { image: PathBuf, entry: u16 },
    /// A vmlinux entered in 64-bit mode, with an optional initrd. The
    /// virtio-mmio devices are appended to `cmdline`.
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
}

/// The legacy interrupt lines: COM1's, and the first virtio-mmio device's
/// (the next ones follow, up to the I/O APIC's last pin).
const SERIAL_IRQ: u32 = 4;
const VIRTIO_FIRST_IRQ: u32 = 5;
const LAST_IRQ: u32 = 23;

#[derive(Debug, Clone)]
pub struct VmmConfig {
    pub memory_mib: u32,
    /// vCPUs; more than one needs a Linux guest.
    pub vcpus: u8,
    pub boot: Boot,
    /// The serial console is written here.
    pub console_log: PathBuf,
    /// When `console_log` is a regular file, the most bytes it holds: a
    /// ring past that (see [`crate::devices::legacy::ConsoleLog`]).
    pub console_log_cap: u64,
    /// A virtio-vsock device with a hybrid (Unix socket) back end.
    pub vsock: Option<VsockConfig>,
    /// A virtio-fs device served by a vhost-user back end (virtiofsd).
    pub fs: Option<FsConfig>,
    /// virtio-net devices, each on a tap the caller opened.
    pub net: Vec<NetConfig>,
    /// Where the control channel listens (see [`crate::control`]).
    pub api_socket: Option<PathBuf>,
    /// What the VMM gives up once it is set up, before the guest runs.
    pub confinement: Confinement,
}

/// What [`run`] gives up after set-up. Both are off for library callers
/// (they would confine the caller's own process); the `hull-vmm` binary
/// turns both on (`--no-seccomp` leaves the filter off, for debugging).
#[derive(Debug, Clone, Copy, Default)]
pub struct Confinement {
    /// Empty every capability set and set no_new_privs
    /// ([`crate::caps::drop_all`]). Capabilities are per thread, so
    /// [`run`] must then be called on the process's only thread.
    pub drop_capabilities: bool,
    /// Install the seccomp filter ([`crate::seccomp`]) on every thread.
    pub seccomp: bool,
    /// Continue as this user and group, with the capabilities (needs
    /// `drop_capabilities`).
    pub run_as: Option<crate::caps::RunAs>,
}

impl VmmConfig {
    /// A VM with `memory_mib` of RAM, a serial console and virtio-rng only.
    pub fn new(memory_mib: u32, boot: Boot, console_log: PathBuf) -> Self {
        Self {
            memory_mib,
            vcpus: 1,
            boot,
            console_log,
            console_log_cap: crate::devices::legacy::console_log::CONSOLE_LOG_CAP,
            vsock: None,
            fs: None,
            net: Vec::new(),
            api_socket: None,
            confinement: Confinement::default(),
        }
    }
}

/// Hybrid vsock, as Firecracker does it: the host reaches guest port P by
/// connecting to `uds_path` and sending `CONNECT P\n`; the guest reaches
/// host port P through the socket `<uds_path>_P`.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// virtio-fs through a vhost-user back end listening on `socket_path`; the
/// guest mounts it by `tag`.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub tag: String,
    pub socket_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Bus(#[from] Overlap),
    #[error(transparent)]
    Linux(#[from] crate::arch::linux::LinuxError),
    #[error(transparent)]
    Regs(#[from] crate::arch::regs::RegsError),
    #[error(transparent)]
    MpTable(#[from] crate::arch::mptable::MpTableError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Caps(#[from] CapsError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// How long the vCPUs get to leave the guest once the VM is ending.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the VM and runs its vCPU until the guest stops or the control
/// channel stops it.
pub fn run(config: &VmmConfig) -> Result<VcpuExitReason, BuildError> {
    let timeline = Arc::new(TimelineRecorder::start());

    // 1. Guest memory, in a memfd.
    let (memory, _memfd) = memory::create(config.memory_mib)?;

    // 2. The KVM VM over that memory.
    let vm = Vm::new(memory)?;

    // 3. For Linux, the interrupt controllers and the PIT (KVM's own).
    let linux = matches!(config.boot, Boot::Linux { .. });
    if linux {
        let kvm = |what| move |source| BuildError::Kvm { what, source };
        vm.fd()
            .set_tss_address(crate::arch::layout::KVM_TSS_ADDRESS)
            .map_err(kvm("setting the TSS address"))?;
        vm.fd()
            .create_irq_chip()
            .map_err(kvm("creating the irqchip"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.fd().create_pit2(pit).map_err(kvm("creating the PIT"))?;
    }
    // With an irqchip, a device's eventfd raises its interrupt line.
    let interrupt_line = |gsi: u32| -> Result<EventFd, BuildError> {
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(io("interrupt eventfd"))?;
        if linux {
            vm.fd()
                .register_irqfd(&eventfd, gsi)
                .map_err(|source| BuildError::Kvm {
                    what: "registering an irqfd",
                    source,
                })?;
        }
        Ok(eventfd)
    };

    // 4. Devices on their buses.
    let mut pio = Bus::default();
    let mut mmio = Bus::default();
    let console = File::create(&config.console_log)
        .and_then(|file| ConsoleLog::with_cap(file, config.console_log_cap))
        .map_err(io(format!("console_log {}", config.console_log.display())))?;
    let serial = SerialDevice::new(interrupt_line(SERIAL_IRQ)?, Box::new(console));
    pio.insert(
        "serial",
        COM1_PORT,
        COM1_PORTS,
        Arc::new(Mutex::new(serial)),
    )?;
    let reset = Arc::new(AtomicBool::new(false));
    pio.insert(
        "i8042",
        I8042_PORT,
        I8042_PORTS,
        Arc::new(Mutex::new(I8042::new(Arc::clone(&reset)))),
    )?;
    let mut virtio_devices: Vec<(&'static str, Box<dyn VirtioDevice>)> = vec![(
        "virtio-rng",
        Box::new(Rng::new().map_err(io("opening /dev/urandom"))?),
    )];
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new(vsock.guest_cid, &vsock.uds_path)?;
        virtio_devices.push(("virtio-vsock", Box::new(device)));
    }
    // virtio-fs comes after rng and vsock: its MMIO slot and IRQ follow theirs.
    if let Some(fs) = &config.fs {
        let device = Fs::new(&fs.tag, &fs.socket_path)?;
        virtio_devices.push(("virtio-fs", Box::new(device)));
    }
    // The net devices come last, in the order given, so adding one moves
    // no other device's MMIO slot or IRQ.
    for (index, net) in config.net.iter().enumerate() {
        virtio_devices.push(("virtio-net", Box::new(Net::new(index, net)?)));
    }
    let lines = (LAST_IRQ - VIRTIO_FIRST_IRQ + 1) as usize;
    if virtio_devices.len() > lines {
        return Err(BuildError::Config {
            field: "net",
            reason: format!(
                "{} virtio devices in all, and only {lines} interrupt lines for them",
                virtio_devices.len()
            ),
        });
    }
    let mut virtio_cmdline = String::new();
    for (index, (name, device)) in virtio_devices.into_iter().enumerate() {
        let irq = VIRTIO_FIRST_IRQ + index as u32;
        let interrupt = Interrupt::new(interrupt_line(irq)?);
        let transport = MmioTransport::new(device, vm.memory().clone(), interrupt);
        let base = VIRTIO_MMIO_BASE + index as u64 * MMIO_LEN;
        mmio.insert(name, base, MMIO_LEN, Arc::new(Mutex::new(transport)))?;
        virtio_cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
    }

    // 5. The guest image, the vCPUs, and the boot vCPU at its entry point.
    let linux_vcpus = match &config.boot {
        Boot::Linux { .. } => config.vcpus,
        Boot::RealMode { .. } => 1,
    };
    if config.vcpus != linux_vcpus {
        return Err(BuildError::Config {
            field: "vcpus",
            reason: "a real-mode guest runs on one vCPU".into(),
        });
    }
    let mut vcpus = (0..config.vcpus)
        .map(|id| Vcpu::new(&vm, u64::from(id)))
        .collect::<Result<Vec<_>, _>>()?;
    match &config.boot {
        Boot::RealMode { image, entry } => {
            let bytes =
                std::fs::read(image).map_err(io(format!("boot.image {}", image.display())))?;
            let end = usize::from(*entry) + bytes.len();
            if end > 0xa_0000 {
                return Err(BuildError::Config {
                    field: "boot.image",
                    reason: format!(
                        "{} bytes at {entry:#x} do not fit below 640 KiB",
                        bytes.len()
                    ),
                });
            }
            vm.memory()
                .write_slice(&bytes, GuestAddress(u64::from(*entry)))
                .map_err(|err| BuildError::Config {
                    field: "boot.image",
                    reason: err.to_string(),
                })?;
            vcpus[0].set_real_mode_entry(*entry)?;
        }
        Boot::Linux {
            kernel,
            initrd,
            cmdline,
        } => {
            let cmdline = format!("{cmdline}{virtio_cmdline}");
            let entry = crate::arch::linux::load(vm.memory(), kernel, initrd.as_deref(), &cmdline)?;
            crate::arch::mptable::setup(vm.memory(), config.vcpus)?;
            // The others wait in KVM for the kernel to start them (INIT/SIPI).
            for (id, vcpu) in vcpus.iter().enumerate().skip(1) {
                crate::arch::regs::setup_application_processor(vm.kvm(), vcpu.fd(), id as u8)?;
            }
            crate::arch::regs::setup_long_mode(vm.kvm(), vcpus[0].fd(), vm.memory(), entry, 0)?;
        }
    }

    timeline.vm_built();

    // The control socket is bound while the VMM may still create files
    // (it may be about to give up root); its thread starts in step 7.
    let control_socket = match &config.api_socket {
        Some(path) => {
            Some(BoundControl::bind(path).map_err(io(format!("api_socket {}", path.display())))?)
        }
        None => None,
    };

    if let (Some(bound), Some(run_as), Some(path)) = (
        &control_socket,
        config.confinement.run_as,
        &config.api_socket,
    ) {
        bound
            .give_to(run_as.uid, run_as.gid)
            .map_err(io(format!("api_socket {}", path.display())))?;
    }

    // 6. Set-up is done and this is still the only thread: every
    // capability goes (and root, if asked), so every thread started from
    // here on has none.
    if config.confinement.drop_capabilities {
        crate::caps::drop_all(config.confinement.run_as)?;
    }

    // 7. The control channel, before any guest code runs, so a pause or
    // stop can come at any point of the boot.
    install_kick_handler().map_err(io("installing the vCPU kick signal handler"))?;
    let control = Arc::new(RunControl::new(vcpus.len()));
    let threads = Arc::new(VcpuThreads::default());
    let _control_server = match (control_socket, &config.api_socket) {
        (Some(bound), Some(path)) => Some(
            bound
                .serve(
                    Arc::clone(&control),
                    Arc::clone(&threads) as Arc<dyn VcpuKicker>,
                    Arc::clone(&timeline),
                )
                .map_err(io(format!("api_socket {}", path.display())))?,
        ),
        _ => None,
    };

    // 8. The seccomp filter, on every thread (the control channel's too),
    // before the first guest instruction; threads started later (the
    // vCPUs', the devices') inherit it.
    if config.confinement.seccomp {
        crate::seccomp::install(&crate::seccomp::filters()?)?;
    }

    // 9. Each vCPU in its own thread, entering the guest.
    let (exits, first_exit) = mpsc::channel::<VcpuResult>();
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    for (id, mut vcpu) in vcpus.drain(..).enumerate() {
        let (pio, mmio, reset) = (Arc::clone(&pio), Arc::clone(&mmio), Arc::clone(&reset));
        let (run_control, timeline, exits) =
            (Arc::clone(&control), Arc::clone(&timeline), exits.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if id == 0 {
                    timeline.kernel_entry();
                }
                let result = vcpu.run(&RunContext {
                    pio: &pio,
                    mmio: &mmio,
                    reset: &reset,
                    control: &run_control,
                });
                run_control.exited();
                let _ = exits.send(result);
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(err) => {
                // The vCPUs that did start must not outlive the VM.
                let _ = control.stop(|| threads.kick(), STOP_TIMEOUT);
                threads.join_all();
                return Err(io("starting a vCPU thread")(err));
            }
        }
    }
    drop(exits);

    // 10. The first vCPU to stop ends the VM for all of them.
    let result = first_exit.recv().unwrap_or(Ok(VcpuExitReason::Stopped));
    if let Err(err) = control.stop(|| threads.kick(), STOP_TIMEOUT) {
        tracing::error!(%err, "stopping the vCPUs");
    }
    threads.join_all();
    drop(vm);
    Ok(result?)
}
