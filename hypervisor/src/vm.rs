//! A running VM, whichever backend started it: the VMM process (QEMU or
//! hull-vmm), its helpers, its console and its hybrid vsock socket.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hull_vmm::control::{self, Request};

use crate::console::Console;
use crate::process::Helper;
use crate::timeline::Timeline;
use crate::work_dir::WorkDir;
use crate::{VmError, vsock};

/// How often the boot is checked on.
const POLL: Duration = Duration::from_millis(100);
/// How long a control request may take (a pause waits for every vCPU).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Vm {
    vmm: Helper,
    helpers: Vec<Helper>,
    console: Console,
    timeline: Timeline,
    vsock_uds: PathBuf,
    /// hull-vmm's control channel; QEMU has none here.
    control_socket: Option<PathBuf>,
    // Last: the work directory goes after every process that uses it.
    work_dir: WorkDir,
}

impl Vm {
    pub(crate) fn new(
        vmm: Helper,
        helpers: Vec<Helper>,
        console: Console,
        timeline: Timeline,
        work_dir: WorkDir,
        vsock_uds: PathBuf,
        control_socket: Option<PathBuf>,
    ) -> Self {
        Self {
            vmm,
            helpers,
            console,
            timeline,
            vsock_uds,
            control_socket,
            work_dir,
        }
    }

    /// The VMM process's name: "qemu" or "hull-vmm".
    pub fn vmm_name(&self) -> &'static str {
        self.vmm.name
    }

    /// The pids of the VMM and its helpers, the VMM first.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        std::iter::once(&self.vmm)
            .chain(&self.helpers)
            .map(|helper| (helper.name, helper.pid()))
            .collect()
    }

    /// The hybrid vsock socket: connect and write `CONNECT <port>\n`.
    pub fn vsock_uds(&self) -> &std::path::Path {
        &self.vsock_uds
    }

    pub fn work_dir(&self) -> &std::path::Path {
        self.work_dir.path()
    }

    pub fn timeline(&self) -> Timeline {
        let mut timeline = self.timeline;
        timeline.first_console_line = self.console.first_line();
        timeline
    }

    /// The guest's last console lines.
    pub fn console_tail(&self) -> String {
        self.console.tail()
    }

    /// Waits until the guest accepts connections on `port`, and returns the
    /// first one. Fails with the console and timeline when a process of the
    /// VM exits or time runs out.
    pub fn wait_for_agent(&mut self, port: u32, timeout: Duration) -> Result<UnixStream, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if let Ok(stream) = vsock::connect(&self.vsock_uds, port) {
                self.timeline.agent_ready = Some(self.timeline.started.elapsed());
                self.timeline.kernel_entry = self.kernel_entry();
                tracing::info!(timeline = %self.timeline(), "agent ready");
                return Ok(stream);
            }
            if Instant::now() >= deadline {
                return Err(VmError::BootTimeout {
                    port,
                    seconds: timeout.as_secs(),
                    timeline: Box::new(self.timeline()),
                    console: self.console_tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// When the VMM entered the guest kernel, from its control channel.
    fn kernel_entry(&self) -> Option<Duration> {
        let socket = self.control_socket.as_ref()?;
        let state = control::request(socket, Request::State, CONTROL_TIMEOUT).ok()?;
        let entry = state.timeline.kernel_entry_ns?;
        Some(Duration::from_nanos(
            entry.checked_sub(self.timeline.started_monotonic_ns)?,
        ))
    }

    /// Takes every vCPU out of the guest until [`Vm::resume`].
    pub fn pause(&self) -> Result<(), VmError> {
        self.control("pause", Request::Pause)
    }

    pub fn resume(&self) -> Result<(), VmError> {
        self.control("resume", Request::Resume)
    }

    /// Whether the vCPUs run, are paused, or are stopping.
    pub fn run_state(&self) -> Result<hull_vmm::RunState, VmError> {
        let socket = self.control_socket("state")?;
        control::request(socket, Request::State, CONTROL_TIMEOUT)
            .map(|response| response.state)
            .map_err(|err| VmError::Control(err.to_string()))
    }

    fn control_socket(&self, operation: &'static str) -> Result<&PathBuf, VmError> {
        self.control_socket.as_ref().ok_or(VmError::Unsupported {
            operation,
            backend: self.vmm.name,
        })
    }

    fn control(&self, operation: &'static str, request: Request) -> Result<(), VmError> {
        let socket = self.control_socket(operation)?;
        control::request(socket, request, CONTROL_TIMEOUT)
            .map(drop)
            .map_err(|err| VmError::Control(err.to_string()))
    }

    /// A new byte stream to guest `port`.
    pub fn connect(&self, port: u32) -> Result<UnixStream, VmError> {
        vsock::connect(&self.vsock_uds, port)
    }

    /// Fails, naming the process, its pid and how it ended, once the VMM or
    /// one of its helpers has exited.
    pub fn check_alive(&mut self) -> Result<(), VmError> {
        use std::os::unix::process::ExitStatusExt;
        // When one process dies the others often follow (QEMU fails without
        // its helpers; virtiofsd exits cleanly once QEMU is gone), so the
        // error names the most likely first to go: one killed by a signal,
        // then one that failed, then any; helpers before the VMM.
        let exited: Vec<(&'static str, u32, std::process::ExitStatus)> = self
            .helpers
            .iter_mut()
            .chain(std::iter::once(&mut self.vmm))
            .filter_map(|process| {
                let pid = process.pid();
                process.exited().map(|status| (process.name, pid, status))
            })
            .collect();
        let culprit = exited
            .iter()
            .find(|(_, _, status)| status.signal().is_some())
            .or_else(|| exited.iter().find(|(_, _, status)| !status.success()))
            .or_else(|| exited.first());
        let Some(&(name, pid, status)) = culprit else {
            return Ok(());
        };
        if self.vmm.exited().is_some() {
            // The console ends with the VMM: read it to the end, so that a
            // guest's last words (a kernel panic) are in the tail.
            self.console.finish();
        }
        let log = std::fs::read_to_string(self.work_dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let mut console = self.console.tail();
        if !log.trim().is_empty() {
            console.push_str(&format!("\n[{name} log]\n{}", log.trim_end()));
        }
        Err(VmError::HelperExited {
            name,
            pid,
            status: crate::process::describe_exit(status),
            timeline: Box::new(self.timeline()),
            console,
        })
    }

    /// Waits up to `timeout` for the guest to power itself off, as it does
    /// after the agent's DestroySandbox; then stops everything regardless.
    /// Returns whether the guest had powered off by itself.
    pub fn shutdown(mut self, timeout: Duration) -> bool {
        let clean = self.vmm.wait_timeout(timeout).is_some();
        self.stop_all();
        clean
    }

    /// Kills the VMM and its helpers now and removes the work directory.
    pub fn kill(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.vmm.kill();
        for helper in &mut self.helpers {
            helper.kill();
        }
        self.console.finish();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop_all();
    }
}
