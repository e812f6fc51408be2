//! The real `hull-vmm` binary on a tiny 64-bit guest, for the confinement
//! and jail tests.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hull_vmm::RunState;
use hull_vmm::control::{ControlError, Request, Response};

/// Assembles `tests/guests/ticker64.S` into an ELF the binary loads as its
/// kernel, above the first MiB.
pub fn ticker64(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/ticker64.S");
    let object = dir.join("ticker64.o");
    let elf = dir.join("ticker64.elf");
    let run = |command: &mut Command| {
        let output = command.output().expect("run the toolchain");
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new("gcc")
        .arg("-c")
        .arg("-o")
        .arg(&object)
        .arg(&source));
    run(Command::new("ld")
        .args([
            "-static",
            "-nostdlib",
            "-Ttext=0x200000",
            "-e",
            "_start",
            "-o",
        ])
        .arg(&elf)
        .arg(&object));
    elf
}

pub struct Vmm {
    pub child: Child,
    pub socket: PathBuf,
    pub console_log: PathBuf,
    /// `--jail`'s directory, when jailed.
    pub jail: Option<PathBuf>,
    pub dir: tempfile::TempDir,
}

impl Vmm {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_in(None, extra)
    }

    /// Started with `--jail DIR`, DIR holding its socket and console log;
    /// the kernel stays outside.
    pub fn start_jailed(extra: &[&str]) -> Self {
        Self::start_in(Some("jail"), extra)
    }

    fn start_in(jail: Option<&str>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let kernel = ticker64(dir.path());
        let jail = jail.map(|name| dir.path().join(name));
        let files = jail.clone().unwrap_or_else(|| dir.path().to_owned());
        std::fs::create_dir_all(&files).expect("jail dir");
        let socket = files.join("api.sock");
        let console_log = files.join("console.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_hull-vmm"));
        if let Some(jail) = &jail {
            command.arg("--jail").arg(jail);
        }
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let child = command
            .stderr(stderr)
            .arg("--kernel")
            .arg(&kernel)
            .args(["--memory-mib", "32"])
            .arg("--console-log")
            .arg(&console_log)
            .arg("--api-socket")
            .arg(&socket)
            .args(extra)
            .spawn()
            .expect("start hull-vmm");
        Self {
            child,
            socket,
            console_log,
            jail,
            dir,
        }
    }

    /// Waits, boundedly, for the started process to end.
    pub fn wait_ended(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "hull-vmm did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What hull-vmm wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).expect("stderr log")
    }

    /// The process running the VM: the keeper's only child when jailed.
    pub fn vmm_pid(&self) -> u32 {
        let keeper = self.child.id();
        if self.jail.is_none() {
            return keeper;
        }
        let children = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children"))
            .expect("the keeper's children");
        let children: Vec<u32> = children
            .split_whitespace()
            .map(|pid| pid.parse().expect("pid"))
            .collect();
        assert_eq!(children.len(), 1, "the keeper's children: {children:?}");
        children[0]
    }

    /// A request to the control channel, retried while the socket is not up.
    pub fn control(&mut self, request: Request) -> Response {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match hull_vmm::control::request(&self.socket, request, Duration::from_secs(10)) {
                Ok(response) => return response,
                Err(ControlError::Io { .. }) if Instant::now() < deadline => {
                    if let Some(status) = self.child.try_wait().expect("wait") {
                        panic!("hull-vmm ended before answering {request:?}: {status}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("{request:?}: {err}"),
            }
        }
    }

    pub fn console_len(&self) -> u64 {
        std::fs::metadata(&self.console_log).map_or(0, |m| m.len())
    }

    /// Waits until the guest writes past `len`.
    pub fn wait_for_output(&mut self, len: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.console_len();
            if now > len {
                return now;
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("hull-vmm ended: {status}");
            }
            assert!(Instant::now() < deadline, "the guest wrote nothing");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `/proc/PID/task/*/status` of every thread, by thread id.
    pub fn thread_statuses(&self) -> Vec<(String, String)> {
        let tasks = format!("/proc/{}/task", self.vmm_pid());
        let mut statuses: Vec<_> = std::fs::read_dir(&tasks)
            .expect("the VMM's threads")
            .map(|entry| {
                let path = entry.expect("task").path();
                let status = std::fs::read_to_string(path.join("status")).expect("status");
                (path.display().to_string(), status)
            })
            .collect();
        statuses.sort();
        statuses
    }

    /// Pauses, resumes and stops the guest, which must keep writing until
    /// the pause and start again after the resume; hull-vmm must exit 0.
    pub fn pause_resume_stop(mut self) {
        assert_eq!(self.control(Request::Pause).state, RunState::Paused);
        let at_pause = self.console_len();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(self.console_len(), at_pause, "a paused guest ran");
        assert_eq!(self.control(Request::Resume).state, RunState::Running);
        self.wait_for_output(at_pause);
        assert_eq!(self.control(Request::Stop).state, RunState::Stopping);
        let status = self.wait_ended();
        assert!(status.success(), "hull-vmm: {status}");
        assert!(
            !self.socket.exists(),
            "the control socket outlived hull-vmm"
        );
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `field` in a `/proc/.../status`.
pub fn field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
}

/// Whether this test process may shrink a bounding set (CAP_SETPCAP), as
/// hull-vmm, started by it, then may too.
pub fn may_drop_bounding_set() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let effective = u64::from_str_radix(field(&status, "CapEff"), 16).expect("CapEff");
    // CAP_SETPCAP is capability 8.
    effective & (1 << 8) != 0
}

pub const NO_CAPS: &str = "0000000000000000";

/// Makes the VMM's main thread call `execve(NULL, NULL, NULL)`, a call
/// the filter does not allow and nothing in hull-vmm makes. Unfiltered, the
/// call fails with EFAULT and the wait goes on.
pub fn force_execve_on_main_thread(pid: u32) {
    force_syscall_on_main_thread(pid, libc::SYS_execve, [0, 0, 0]);
}

/// Makes the VMM's main thread call `clone(flags, NULL, NULL, NULL, 0)`:
/// ptrace stops the thread where it waits for the vCPUs (in a futex call),
/// points it back at that `syscall` instruction with the call's number and
/// arguments, and lets it go.
pub fn force_clone_on_main_thread(pid: u32, flags: u64) {
    force_syscall_on_main_thread(pid, libc::SYS_clone, [flags, 0, 0]);
}

fn force_syscall_on_main_thread(pid: u32, number: libc::c_long, args: [u64; 3]) {
    use nix::sys::ptrace;
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;

    let main = Pid::from_raw(pid as i32);
    ptrace::seize(main, ptrace::Options::empty()).expect("PTRACE_SEIZE");
    ptrace::interrupt(main).expect("PTRACE_INTERRUPT");
    match waitpid(main, Some(WaitPidFlag::__WALL)).expect("waitpid") {
        WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..) => {}
        other => panic!("the main thread did not stop: {other:?}"),
    }
    let mut regs = ptrace::getregs(main).expect("PTRACE_GETREGS");
    // Interrupted in a system call, the thread is just past its two-byte
    // `syscall` instruction (0f 05).
    let syscall_at = regs.rip - 2;
    let code = ptrace::read(main, syscall_at as ptrace::AddressType).expect("PTRACE_PEEKTEXT");
    assert_eq!(
        code & 0xffff,
        0x050f,
        "the main thread is not stopped in a system call (rip {:#x})",
        regs.rip
    );
    regs.rip = syscall_at;
    regs.rax = number as u64;
    // Not a restart of the interrupted call.
    regs.orig_rax = u64::MAX;
    (regs.rdi, regs.rsi, regs.rdx) = (args[0], args[1], args[2]);
    // clone's fourth and fifth arguments (child_tid, tls).
    (regs.r10, regs.r8) = (0, 0);
    ptrace::setregs(main, regs).expect("PTRACE_SETREGS");
    ptrace::detach(main, None).expect("PTRACE_DETACH");
}
