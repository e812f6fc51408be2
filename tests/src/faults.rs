//! Fault injection through a real containerd: which process of a pod to
//! kill -9 and how to find it, and containerd's event stream, from which a
//! test reads the exit statuses containerd was told.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::Containerd;
use crate::hull_runtime::HullRuntime;

/// A process of a pod on the host that a test kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    /// QEMU or hull-vmm, whichever runs the pod.
    Vmm,
    Virtiofsd,
    /// QEMU's hybrid vsock back end; hull-vmm has it built in.
    VhostDeviceVsock,
    /// `containerd-shim-hull-v2`.
    Shim,
}

/// The name the shim's pids file and messages give the shim itself.
pub const SHIM_NAME: &str = "containerd-shim-hull-v2";

impl Victim {
    /// The victim's name and pid in the pod whose directory is `pod_dir`,
    /// once the pod has recorded it.
    pub fn find(self, pod_dir: &Path) -> Option<(String, i32)> {
        if self == Self::Shim {
            let pid = std::fs::read_to_string(pod_dir.join("shim.pid")).ok()?;
            return Some((SHIM_NAME.to_owned(), pid.trim().parse().ok()?));
        }
        HullRuntime::vm_processes(pod_dir)
            .into_iter()
            .find(|(name, _)| match self {
                Self::Vmm => name == "qemu" || name == "hull-vmm",
                Self::Virtiofsd => name == "virtiofsd",
                Self::VhostDeviceVsock => name == "vhost-device-vsock",
                Self::Shim => false,
            })
    }
}

/// The last `count` lines of a file, for failure messages.
pub fn last_lines(path: &Path, count: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// kill -9.
pub fn kill_9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|err| panic!("kill -9 {pid}: {err}"));
}

/// Polls `found` every 20 ms until it gives a value; panics naming `what`
/// after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ctr events` of one containerd, written to a file while the test runs.
#[derive(Debug)]
pub struct EventLog {
    child: Child,
    file: tempfile::NamedTempFile,
}

impl EventLog {
    pub fn start(containerd: &Containerd) -> Self {
        let file = tempfile::NamedTempFile::new().expect("events file");
        let child = Command::new("ctr")
            .arg("--address")
            .arg(containerd.socket())
            .arg("events")
            .stdin(Stdio::null())
            .stdout(file.reopen().expect("events file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        Self { child, file }
    }

    pub fn text(&self) -> String {
        let mut text = String::new();
        let _ = self
            .file
            .reopen()
            .and_then(|mut file| file.read_to_string(&mut text));
        text
    }

    /// The exit status of the first TaskExit for process `id` of container
    /// `container` (the container's own id for its init process; empty for
    /// any).
    pub fn exit_status(&self, container: &str, id: &str) -> Option<u32> {
        self.text()
            .lines()
            .filter(|line| line.contains("/tasks/exit"))
            .find(|line| {
                line.contains(&format!("\"container_id\":\"{container}\""))
                    && (id.is_empty() || line.contains(&format!("\"id\":\"{id}\"")))
            })
            .map(|line| {
                // Go's JSON leaves a zero status out.
                line.split_once("\"exit_status\":")
                    .and_then(|(_, rest)| {
                        let digits: String =
                            rest.chars().take_while(char::is_ascii_digit).collect();
                        digits.parse().ok()
                    })
                    .unwrap_or(0)
            })
    }

    /// Waits up to `timeout` for [`Self::exit_status`].
    pub fn wait_exit(&self, container: &str, id: &str, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status(container, id) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no TaskExit for {container}/{id} in:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shell script that makes PID 1 of its PID namespace crash: it
/// overwrites every executable mapping of PID 1 with zeros through
/// /proc/1/mem (which needs CAP_SYS_PTRACE), so that the next instruction
/// PID 1 runs faults, as memory corruption in the agent would. Its own exit
/// is what wakes the agent: a SIGCHLD, handled in code that is gone.
pub const CRASH_PID_1: &str = r#"
echo "PID 1 is $(cat /proc/1/comm)"
grep ' r-xp ' /proc/1/maps > /tmp/text || { echo "cannot read /proc/1/maps"; exit 1; }
while read range perms rest; do
    start=$((0x${range%-*})); end=$((0x${range#*-}))
    dd if=/dev/zero of=/proc/1/mem bs=4096 seek=$((start / 4096)) \
        count=$(((end - start) / 4096)) conv=notrunc 2>/dev/null \
        && echo "zeroed $range of PID 1" || echo "could not zero $range"
done < /tmp/text
"#;
