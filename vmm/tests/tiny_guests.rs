//! Tiny freestanding guests under the host's real /dev/kvm. On this
//! project's machines that is PVM, which emulates a plain guest instruction
//! by instruction: plenty for a program of a few hundred instructions, and a
//! real KVM exit path for every port and MMIO access. Needs root.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_vmm::control::{ControlError, Request, Response};
use hull_vmm::{Boot, NetConfig, RunState, VcpuExitReason, VmmConfig, VsockConfig};

/// Where the tiny guests are linked and started: above the real-mode IVT
/// and BIOS data area.
const ENTRY: u16 = 0x1000;

/// Assembles `tests/guests/<name>.S` into a flat real-mode image with the
/// host's binutils.
fn assemble(name: &str, dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guests")
        .join(format!("{name}.S"));
    let object = dir.join(format!("{name}.o"));
    let image = dir.join(format!("{name}.bin"));
    let run = |command: &mut Command| {
        let output = command.output().expect("run the assembler");
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new("gcc")
        .args(["-m32", "-c", "-o"])
        .arg(&object)
        .arg(&source));
    run(Command::new("ld")
        .args(["-m", "elf_i386", "--oformat", "binary"])
        .arg(format!("-Ttext={ENTRY:#x}"))
        .arg("-o")
        .arg(&image)
        .arg(&object));
    image
}

/// Builds a guest written in freestanding C, `tests/guests/<name>.c`,
/// behind the shared real-to-protected-mode entry `c_entry.S`.
fn compile(name: &str, dir: &Path) -> PathBuf {
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let entry = dir.join("c_entry.o");
    let object = dir.join(format!("{name}.o"));
    let image = dir.join(format!("{name}.bin"));
    let run = |command: &mut Command| {
        let output = command.output().expect("run the compiler");
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new("gcc")
        .args(["-m32", "-c", "-o"])
        .arg(&entry)
        .arg(guests.join("c_entry.S")));
    run(Command::new("gcc")
        .args([
            "-m32",
            "-O1",
            "-ffreestanding",
            "-nostdlib",
            "-fno-pic",
            "-fno-pie",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fcf-protection=none",
            "-c",
            "-o",
        ])
        .arg(&object)
        .arg(guests.join(format!("{name}.c"))));
    run(Command::new("ld")
        .args(["-m", "elf_i386", "--oformat", "binary", "--build-id=none"])
        .args(["-e", "_start"])
        .arg(format!("-Ttext={ENTRY:#x}"))
        .arg("-o")
        .arg(&image)
        .arg(&entry)
        .arg(&object));
    image
}

/// 16 MiB for a real-mode image at [`ENTRY`], its console in `console_log`.
fn real_mode(image: PathBuf, console_log: PathBuf) -> VmmConfig {
    VmmConfig::new(
        16,
        Boot::RealMode {
            image,
            entry: ENTRY,
        },
        console_log,
    )
}

fn run_guest(name: &str) -> (VcpuExitReason, String) {
    let dir = tempfile::tempdir().expect("dir");
    let image = assemble(name, dir.path());
    let console_log = dir.path().join("console.log");
    let exit = hull_vmm::run(&real_mode(image, console_log.clone())).expect("run the guest");
    (
        exit,
        std::fs::read_to_string(console_log).expect("console log"),
    )
}

#[test]
fn serial_output_reaches_the_console_log() {
    let (exit, console) = run_guest("serial_hello");
    assert_eq!(exit, VcpuExitReason::Halted);
    assert_eq!(console, "Hello from a tiny guest\n");
}

#[test]
fn a_missing_image_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let err = hull_vmm::run(&real_mode(
        dir.path().join("absent.bin"),
        dir.path().join("console.log"),
    ))
    .expect_err("no image")
    .to_string();
    assert!(err.starts_with("boot.image "), "{err}");
}

#[test]
fn virtio_rng_registers_read_through_mmio() {
    let (exit, console) = run_guest("virtio_registers");
    assert_eq!(exit, VcpuExitReason::Halted, "console: {console}");
    // "virt", version 2, device 4 (rng), vendor "HULL", a 256-entry queue.
    assert_eq!(console, "74726976 00000002 00000004 4c554c48 00000100 \n");
}

/// Creates a tap with the flags hull-vmm needs, in the calling thread's
/// network namespace.
fn create_tap() -> std::os::fd::OwnedFd {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    // SAFETY: all zeros is a valid `ifreq`.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"hulltap0") {
        *slot = *byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which this is.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    assert!(
        result >= 0,
        "TUNSETIFF: {}",
        std::io::Error::last_os_error()
    );
    file.into()
}

#[test]
fn virtio_net_registers_and_config_read_through_mmio() {
    // In a network namespace of its own, which the tap vanishes with.
    let (exit, console) = std::thread::spawn(|| {
        use std::os::fd::AsRawFd;
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        let tap = create_tap();
        let dir = tempfile::tempdir().expect("dir");
        let image = assemble("net_registers", dir.path());
        let console_log = dir.path().join("console.log");
        let mut config = real_mode(image, console_log.clone());
        config.net.push(NetConfig {
            tap_fd: tap.as_raw_fd(),
            mac: [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30],
            mtu: 1400,
        });
        let exit = hull_vmm::run(&config).expect("run the guest");
        (exit, std::fs::read_to_string(console_log).expect("console"))
    })
    .join()
    .expect("the guest's thread");
    assert_eq!(exit, VcpuExitReason::Halted, "console: {console}");
    // "virt", version 2, device 1 (net), vendor "HULL", a 256-entry queue;
    // config space: mac 02:00:5e:10 | 20:30, status LINK_UP | one queue
    // pair, mtu 1400 (0x578), all little endian.
    assert_eq!(
        console,
        "74726976 00000002 00000001 4c554c48 00000100 105e0002 00013020 05780001 \n"
    );
}

#[test]
fn a_keyboard_controller_reset_ends_the_vm() {
    let (exit, _) = run_guest("reset");
    assert_eq!(exit, VcpuExitReason::Shutdown);
}

/// A request to the control channel, retried while the socket is not up yet.
fn control(socket: &Path, request: Request) -> Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match hull_vmm::control::request(socket, request, Duration::from_secs(10)) {
            Ok(response) => return response,
            Err(ControlError::Io { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("{request:?}: {err}"),
        }
    }
}

fn console_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits until the console log grows past `len`.
fn wait_for_output(path: &Path, len: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = console_len(path);
        if now > len {
            return now;
        }
        assert!(Instant::now() < deadline, "the guest wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_control_channel_pauses_resumes_and_stops_a_running_guest() {
    let dir = tempfile::tempdir().expect("dir");
    let image = assemble("ticker", dir.path());
    let console_log = dir.path().join("console.log");
    let socket = dir.path().join("api.sock");
    let mut config = real_mode(image, console_log.clone());
    config.api_socket = Some(socket.clone());
    let vmm = std::thread::spawn(move || hull_vmm::run(&config));

    let state = control(&socket, Request::State);
    assert_eq!(state.error, None);
    let output = wait_for_output(&console_log, 0);
    let timeline = control(&socket, Request::State).timeline;
    let built = timeline.vm_built_ns.expect("VM built");
    let entry = timeline.kernel_entry_ns.expect("guest entered");
    assert!(
        timeline.vmm_start_ns <= built && built <= entry,
        "{timeline:?}"
    );

    let paused = control(&socket, Request::Pause);
    assert_eq!(paused.state, RunState::Paused);
    let at_pause = console_len(&console_log);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(console_len(&console_log), at_pause, "a paused guest ran");
    assert!(at_pause >= output);

    let resumed = control(&socket, Request::Resume);
    assert_eq!(resumed.state, RunState::Running);
    wait_for_output(&console_log, at_pause);

    let stopping = control(&socket, Request::Stop);
    assert_eq!(stopping.state, RunState::Stopping);
    let exit = vmm.join().expect("VMM thread").expect("VMM run");
    assert_eq!(exit, VcpuExitReason::Stopped);
    assert!(!socket.exists(), "the control socket outlived the VMM");
}

#[test]
fn a_bad_control_request_is_refused_and_the_channel_keeps_serving() {
    use std::io::{BufRead, BufReader, Write};

    let dir = tempfile::tempdir().expect("dir");
    let image = assemble("ticker", dir.path());
    let socket = dir.path().join("api.sock");
    let mut config = real_mode(image, dir.path().join("console.log"));
    config.api_socket = Some(socket.clone());
    let vmm = std::thread::spawn(move || hull_vmm::run(&config));
    control(&socket, Request::State);

    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stream.write_all(b"{\"op\":\"explode\"}\n").expect("write");
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .expect("read");
    let answer: Response = serde_json::from_str(&answer).expect("a JSON answer");
    assert!(
        answer
            .error
            .as_deref()
            .is_some_and(|e| e.contains("bad request")),
        "{answer:?}"
    );
    drop(stream);

    assert_eq!(control(&socket, Request::Resume).state, RunState::Running);
    control(&socket, Request::Stop);
    assert_eq!(
        vmm.join().expect("thread").expect("run"),
        VcpuExitReason::Stopped
    );
}

/// How long the host side waits for the guest at each step; the guest runs
/// in an instruction emulator, but needs well under a second per step.
const STEP: Duration = Duration::from_secs(30);

fn accept_within(listener: &UnixListener, limit: Duration) -> UnixStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                stream.set_read_timeout(Some(STEP)).expect("timeout");
                return stream;
            }
            Err(err) if Instant::now() >= deadline => panic!("the guest never connected: {err}"),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn read_exactly(stream: &mut UnixStream, len: usize) -> String {
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).expect("read from the guest");
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn virtio_vsock_round_trips_through_real_virtqueues() {
    let dir = tempfile::tempdir().expect("dir");
    let image = compile("vsock_roundtrip", dir.path());
    let console_log = dir.path().join("console.log");
    let uds = dir.path().join("vsock.sock");
    // The guest connects to host port 5000 first thing.
    let port_5000 = dir.path().join("vsock.sock_5000");
    let listener = UnixListener::bind(&port_5000).expect("listen on port 5000");
    let mut config = real_mode(image, console_log.clone());
    config.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    let (done, exit) = mpsc::channel();
    // The VM runs on its own thread so that a stuck guest fails the test
    // at a deadline instead of hanging it.
    std::thread::spawn(move || {
        let _ = done.send(hull_vmm::run(&config).map_err(|err| err.to_string()));
    });
    let console = || std::fs::read_to_string(&console_log).unwrap_or_default();

    // 1. Guest to host.
    let mut host = accept_within(&listener, STEP);
    host.write_all(b"ping").expect("write");
    assert_eq!(read_exactly(&mut host, 4), "PING", "console: {}", console());

    // 2. Host to guest, through the hybrid socket.
    let mut client = UnixStream::connect(&uds).expect("connect to the vsock socket");
    client.set_read_timeout(Some(STEP)).expect("timeout");
    client.write_all(b"CONNECT 1024\n").expect("write");
    let ok = read_exactly(&mut client, "OK 1073741824\n".len());
    assert_eq!(ok, "OK 1073741824\n", "console: {}", console());
    client.write_all(b"hi").expect("write");
    assert_eq!(
        read_exactly(&mut client, 3),
        "bye",
        "console: {}",
        console()
    );

    let exit = exit
        .recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("the guest did not halt; console: {}", console()))
        .expect("run the guest");
    assert_eq!(exit, VcpuExitReason::Halted, "console: {}", console());
    assert_eq!(
        console(),
        "74726976 00000002 00000013 4c554c48 00000100 \n\
         cid 00000003 00000000 \n\
         RESPONSE from 00001388 \n\
         RW ping\n\
         REQUEST to 00000400 from 40000000 \n\
         RW hi\n\
         done\n"
    );
    // The VM is gone: its connections are closed and its socket removed.
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).expect("EOF"), 0);
    assert_eq!(host.read_to_end(&mut rest).expect("EOF"), 0);
    assert!(!uds.exists(), "the vsock socket outlived the VM");
}

/// The test process's resident memory (the VMM runs in it), in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .expect("resident pages")
        .parse()
        .expect("a number");
    pages * 4096
}

/// A guest that floods its serial console for a minute, with and without
/// newlines, leaves the console log under its cap (a ring once it is
/// full) and the VMM's memory where it was. The guest prints one byte per
/// VM exit, some tens of KiB a second here, so the cap is set below the
/// default 1 MiB for the ring to wrap within the minute.
#[test]
fn a_console_flood_leaves_the_console_log_and_memory_bounded() {
    const FLOOD: Duration = Duration::from_secs(60);
    const LOG_CAP: u64 = 64 * 1024;
    const MIB: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().expect("dir");
    let image = assemble("flood", dir.path());
    let console_log = dir.path().join("console.log");
    let socket = dir.path().join("api.sock");
    let mut config = real_mode(image, console_log.clone());
    config.api_socket = Some(socket.clone());
    config.console_log_cap = LOG_CAP;
    let vmm = std::thread::spawn(move || hull_vmm::run(&config));
    control(&socket, Request::State);
    wait_for_output(&console_log, 0);
    // Past the start-up allocations of this and the other tests.
    std::thread::sleep(Duration::from_secs(5));
    let settled = resident();
    let (mut largest_log, mut most_resident) = (0, settled);
    let started = Instant::now();
    while started.elapsed() < FLOOD {
        std::thread::sleep(Duration::from_millis(500));
        largest_log = largest_log.max(console_len(&console_log));
        most_resident = most_resident.max(resident());
    }
    control(&socket, Request::Stop);
    assert_eq!(
        vmm.join().expect("thread").expect("run"),
        VcpuExitReason::Stopped
    );
    let log = std::fs::read(&console_log).expect("console log");
    assert!(
        largest_log <= LOG_CAP,
        "the console log reached {largest_log} bytes"
    );
    assert!(
        log.starts_with(b"[console log wrapped"),
        "the flood did not fill the log, or the log does not say it wrapped: {:?}",
        String::from_utf8_lossy(&log[..log.len().min(80)])
    );
    assert!(
        most_resident - settled < 32 * MIB,
        "the VMM's process grew by {} MiB",
        (most_resident - settled) / MIB
    );
}
