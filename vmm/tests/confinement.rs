//! The real `hull-vmm` binary, running a tiny 64-bit guest under the host's
//! /dev/kvm, is confined while the guest runs: every thread under the
//! seccomp filter (`Seccomp: 2`) with no capabilities, and the guest and the
//! control channel still work. (That a call outside the filter kills the
//! process is tested in `src/seccomp/tests.rs`.) Needs root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hull_vmm::RunState;
use hull_vmm::control::{ControlError, Request, Response};

/// Assembles `tests/guests/ticker64.S` into an ELF the binary loads as its
/// kernel, above the first MiB.
fn ticker64(dir: &Path) -> PathBuf {
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

struct Vmm {
    child: Child,
    socket: PathBuf,
    console_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Vmm {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let kernel = ticker64(dir.path());
        let socket = dir.path().join("api.sock");
        let console_log = dir.path().join("console.log");
        let child = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
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
            _dir: dir,
        }
    }

    /// A request to the control channel, retried while the socket is not up.
    fn control(&mut self, request: Request) -> Response {
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

    fn console_len(&self) -> u64 {
        std::fs::metadata(&self.console_log).map_or(0, |m| m.len())
    }

    /// Waits until the guest writes past `len`.
    fn wait_for_output(&mut self, len: u64) -> u64 {
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
    fn thread_statuses(&self) -> Vec<(String, String)> {
        let tasks = format!("/proc/{}/task", self.child.id());
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
    fn pause_resume_stop(mut self) {
        assert_eq!(self.control(Request::Pause).state, RunState::Paused);
        let at_pause = self.console_len();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(self.console_len(), at_pause, "a paused guest ran");
        assert_eq!(self.control(Request::Resume).state, RunState::Running);
        self.wait_for_output(at_pause);
        assert_eq!(self.control(Request::Stop).state, RunState::Stopping);
        let status = self.child.wait().expect("wait");
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
fn field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
}

/// Whether this test process may shrink a bounding set (CAP_SETPCAP), as
/// hull-vmm, started by it, then may too.
fn may_drop_bounding_set() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let effective = u64::from_str_radix(field(&status, "CapEff"), 16).expect("CapEff");
    // CAP_SETPCAP is capability 8.
    effective & (1 << 8) != 0
}

const NO_CAPS: &str = "0000000000000000";

#[test]
fn every_thread_runs_under_the_filter_with_no_capabilities_and_the_guest_works() {
    let mut vmm = Vmm::start(&[]);
    assert_eq!(vmm.control(Request::State).state, RunState::Running);
    vmm.wait_for_output(0);
    let statuses = vmm.thread_statuses();
    // The main thread, the control channel's and the vCPU's at least.
    assert!(statuses.len() >= 3, "{} threads", statuses.len());
    for (thread, status) in &statuses {
        assert_eq!(field(status, "Seccomp"), "2", "{thread}");
        assert_eq!(field(status, "NoNewPrivs"), "1", "{thread}");
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(field(status, set), NO_CAPS, "{thread} {set}");
        }
        if may_drop_bounding_set() {
            assert_eq!(field(status, "CapBnd"), NO_CAPS, "{thread} CapBnd");
        }
    }
    vmm.pause_resume_stop();
}

#[test]
fn no_seccomp_leaves_the_filter_off_but_still_drops_the_capabilities() {
    let mut vmm = Vmm::start(&["--no-seccomp"]);
    vmm.control(Request::State);
    vmm.wait_for_output(0);
    for (thread, status) in &vmm.thread_statuses() {
        assert_eq!(field(status, "Seccomp"), "0", "{thread}");
        assert_eq!(field(status, "CapEff"), NO_CAPS, "{thread}");
    }
    vmm.pause_resume_stop();
}
