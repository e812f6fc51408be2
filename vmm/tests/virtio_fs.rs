//! virtio-fs against a real virtiofsd (at /usr/local/bin/virtiofsd or on
//! PATH), driven by tiny C guests under the host's /dev/kvm. Needs root.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_vmm::{Boot, FsConfig, VcpuExitReason, VmmConfig};

const ENTRY: u16 = 0x1000;
/// A run that takes longer has hung: the guests' own polls end well before.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const TAG: &str = "hullfs";

/// A virtiofsd serving a fresh directory; killed and reaped on drop,
/// whatever the test did.
struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Virtiofsd {
    fn start(dir: &Path) -> Self {
        let shared = dir.join("shared");
        std::fs::create_dir(&shared).expect("shared dir");
        let socket = dir.join("virtiofsd.sock");
        let log = dir.join("virtiofsd.log");
        let binary = ["/usr/local/bin/virtiofsd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .unwrap_or_else(|| "virtiofsd".into());
        let child = Command::new(binary)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--cache", "never", "--sandbox", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log"))
            .spawn()
            .expect("start virtiofsd");
        let mut virtiofsd = Self { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Probing with a connect would use up virtiofsd's one connection;
        // the socket file appearing is enough, the device retries a refusal.
        while !virtiofsd.socket.exists() {
            if let Ok(Some(status)) = virtiofsd.child.try_wait() {
                panic!("virtiofsd exited with {status}: {}", virtiofsd.log());
            }
            assert!(
                Instant::now() < deadline,
                "no virtiofsd socket: {}",
                virtiofsd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        virtiofsd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds `tests/guests/<name>.c` with its entry into a flat image.
fn build_guest(name: &str, dir: &Path) -> PathBuf {
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let entry = dir.join("entry.o");
    let object = dir.join(format!("{name}.o"));
    let image = dir.join(format!("{name}.bin"));
    let run = |command: &mut Command| {
        let output = command.output().expect("run the toolchain");
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new("gcc")
        .args(["-m32", "-c", "-o"])
        .arg(&entry)
        .arg(guests.join("entry.S")));
    run(Command::new("gcc")
        .args([
            "-m32",
            "-O1",
            "-ffreestanding",
            "-nostdlib",
            "-fno-pic",
            "-fno-stack-protector",
            "-fno-builtin",
            "-fno-tree-loop-distribute-patterns",
            "-fno-asynchronous-unwind-tables",
            "-fcf-protection=none",
            "-mgeneral-regs-only",
            "-c",
            "-o",
        ])
        .arg(&object)
        .arg(guests.join(format!("{name}.c"))));
    run(Command::new("ld")
        .args(["-m", "elf_i386", "--oformat", "binary", "-T"])
        .arg(guests.join("guest.ld"))
        .arg("-o")
        .arg(&image)
        .arg(&entry)
        .arg(&object));
    image
}

fn config(image: PathBuf, console_log: PathBuf, socket_path: PathBuf) -> VmmConfig {
    let mut config = VmmConfig::new(
        16,
        Boot::RealMode {
            image,
            entry: ENTRY,
        },
        console_log,
    );
    config.fs = Some(FsConfig {
        tag: TAG.into(),
        socket_path,
    });
    config
}

/// Runs guest `name` with a virtio-fs device on a fresh virtiofsd, on a
/// thread of its own so that a hang fails the test instead of blocking it.
fn run_with_virtiofsd(name: &str) -> (VcpuExitReason, String) {
    let dir = tempfile::tempdir().expect("dir");
    let virtiofsd = Virtiofsd::start(dir.path());
    let console_log = dir.path().join("console.log");
    let config = config(
        build_guest(name, dir.path()),
        console_log.clone(),
        virtiofsd.socket.clone(),
    );
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(hull_vmm::run(&config).map_err(|err| err.to_string()));
    });
    let console = || std::fs::read_to_string(&console_log).unwrap_or_default();
    let exit = match result.recv_timeout(RUN_TIMEOUT) {
        Ok(Ok(exit)) => exit,
        Ok(Err(err)) => panic!("run failed: {err}\nvirtiofsd: {}", virtiofsd.log()),
        Err(_) => panic!(
            "the guest did not finish in {RUN_TIMEOUT:?}; console: {}\nvirtiofsd: {}",
            console(),
            virtiofsd.log()
        ),
    };
    (exit, console())
}

#[test]
fn virtio_fs_registers_and_config_read_through_mmio() {
    let (exit, console) = run_with_virtiofsd("fs_registers");
    assert_eq!(exit, VcpuExitReason::Halted, "console: {console}");
    // "virt", version 2, device 26, vendor "HULL"; features: virtiofsd's
    // INDIRECT_DESC and EVENT_IDX (bits 28, 29) and VERSION_1 (bit 32),
    // without its vhost-user-only bits; a 1024-entry request queue; the
    // tag; one request queue.
    assert_eq!(
        console,
        "74726976 00000002 0000001a 4c554c48 30000000 00000001 00000400 [hullfs] 00000001 \n"
    );
}

/// Pulls `name=XXXXXXXX` out of one of the guest's lines.
fn field(line: &str, name: &str) -> u32 {
    let prefix = format!("{name}=");
    let value = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"));
    u32::from_str_radix(value, 16).expect("hex")
}

#[test]
fn fuse_init_round_trips_through_virtiofsd_and_again_after_a_reset() {
    let (exit, console) = run_with_virtiofsd("fs_init");
    assert_eq!(exit, VcpuExitReason::Halted, "console: {console}");
    let lines: Vec<&str> = console.lines().collect();
    assert_eq!(lines.len(), 2, "console: {console}");
    for (round, line) in lines.iter().enumerate() {
        assert!(!line.contains("timeout"), "round {round}: {line}");
        assert_eq!(field(line, "used"), 1, "one reply: {line}");
        assert_eq!(field(line, "error"), 0, "{line}");
        assert_eq!(field(line, "unique"), round as u32 + 1, "{line}");
        assert_eq!(field(line, "major"), 7, "{line}");
        assert!(field(line, "minor") >= 27, "{line}");
        // fuse_out_header and at least the 7.23 fuse_init_out.
        assert!(field(line, "len") >= 16 + 24, "{line}");
        assert_eq!(field(line, "isr") & 1, 1, "no used-ring interrupt: {line}");
    }
}

#[test]
fn a_missing_virtiofsd_socket_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let config = config(
        dir.path().join("never-built.bin"),
        dir.path().join("console.log"),
        dir.path().join("absent.sock"),
    );
    let err = hull_vmm::run(&config)
        .expect_err("no virtiofsd")
        .to_string();
    assert!(err.starts_with("fs.socket_path "), "{err}");
    assert!(err.contains("absent.sock"), "{err}");
}

mod host_driven {
    //! The same device driven from the host side of the transport, so the
    //! test can kill virtiofsd at a moment of its choosing.

    use hull_vmm::devices::BusDevice;
    use hull_vmm::devices::virtio::Interrupt;
    use hull_vmm::devices::virtio::fs::Fs;
    use hull_vmm::devices::virtio::mmio::MmioTransport;
    use hull_vmm::memory::GuestMemory;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::*;

    const DESC: u64 = 0x10_0000;
    const AVAIL: u64 = 0x10_1000;
    const USED: u64 = 0x10_2000;
    const REQUEST: u64 = 0x10_3000;
    const REPLY: u64 = 0x10_4000;

    fn write(transport: &mut MmioTransport, offset: u64, value: u32) {
        transport.write(offset, &value.to_le_bytes());
    }

    fn read(transport: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// Sets up queue 1 and DRIVER_OK, as the guest's fs_init does.
    fn activate(transport: &mut MmioTransport) {
        write(transport, 0x070, 0);
        write(transport, 0x070, 1 | 2);
        write(transport, 0x024, 1);
        write(transport, 0x020, 1);
        write(transport, 0x070, 1 | 2 | 8);
        write(transport, 0x030, 1);
        write(transport, 0x038, 8);
        write(transport, 0x080, DESC as u32);
        write(transport, 0x090, AVAIL as u32);
        write(transport, 0x0a0, USED as u32);
        write(transport, 0x044, 1);
        write(transport, 0x070, 1 | 2 | 8 | 4);
    }

    /// Puts a FUSE_INIT on the ring (descriptors 0 and 1, avail slot 0).
    fn offer_fuse_init(memory: &GuestMemory) {
        let put = |addr: u64, bytes: &[u8]| {
            memory
                .write_slice(bytes, GuestAddress(addr))
                .expect("guest write")
        };
        let mut request = Vec::new();
        for word in [56u32, 26, 7, 0, 0, 0, 0, 0, 0, 0, 7, 38, 0, 0] {
            request.extend_from_slice(&word.to_le_bytes());
        }
        put(REQUEST, &request);
        let descriptor = |addr: u64, len: u32, flags: u16, next: u16| {
            let mut bytes = addr.to_le_bytes().to_vec();
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&flags.to_le_bytes());
            bytes.extend_from_slice(&next.to_le_bytes());
            bytes
        };
        put(DESC, &descriptor(REQUEST, 56, 1, 1));
        put(DESC + 16, &descriptor(REPLY, 256, 2, 0));
        put(AVAIL + 4, &0u16.to_le_bytes());
        put(AVAIL + 2, &1u16.to_le_bytes());
    }

    fn wait_for_used(memory: &GuestMemory) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if memory
                .read_obj::<u16>(GuestAddress(USED + 2))
                .expect("used")
                == 1
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Kills the process and waits until it is gone (a zombie), so that its
    /// end of the socket is closed; the test's [`Virtiofsd`] reaps it.
    fn kill(pid: u32) {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill virtiofsd");
        let stat = format!("/proc/{pid}/stat");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&stat).is_ok_and(|stat| !stat.contains(") Z ")) {
            assert!(Instant::now() < deadline, "virtiofsd did not die");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn scenario(socket: &Path, pid: u32) {
        // The device's reports of the dead back end show with the test's output.
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let (memory, _memfd) = hull_vmm::memory::create(16).expect("memory");
        let device = Fs::new(TAG, socket).expect("device");
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let mut transport = MmioTransport::new(Box::new(device), memory.clone(), interrupt);
        offer_fuse_init(&memory);
        activate(&mut transport);
        write(&mut transport, 0x050, 1);
        assert!(wait_for_used(&memory), "no reply");
        let major: u32 = memory.read_obj(GuestAddress(REPLY + 16)).expect("reply");
        assert_eq!(major, 7);

        kill(pid);

        // Kicks never touch the socket, so they cannot fail or block.
        for _ in 0..1000 {
            write(&mut transport, 0x050, 1);
        }
        // Reset (GET_VRING_BASE on a dead socket) and a new activation fail,
        // are logged, and return.
        write(&mut transport, 0x070, 0);
        activate(&mut transport);
        write(&mut transport, 0x050, 1);
        assert_eq!(read(&mut transport, 0x000), 0x7472_6976);
        assert_eq!(read(&mut transport, 0x008), 26);
        write(&mut transport, 0x070, 0);
    }

    #[test]
    fn a_dead_virtiofsd_leaves_the_vmm_running() {
        let dir = tempfile::tempdir().expect("dir");
        let virtiofsd = Virtiofsd::start(dir.path());
        let (socket, pid) = (virtiofsd.socket.clone(), virtiofsd.child.id());
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            scenario(&socket, pid);
            let _ = done.send(());
        });
        // Well inside the device's 10 s socket timeout: nothing here may
        // wait on a back end that is gone.
        match finished.recv_timeout(Duration::from_secs(8)) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!(
                    "the scenario failed (see its panic above); virtiofsd: {}",
                    virtiofsd.log()
                )
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the device blocked"),
        }
    }
}
