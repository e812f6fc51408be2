//! A running QEMU VM and its helpers.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::WorkDir;
use crate::console::Console;
use crate::process::Helper;
use crate::timeline::Timeline;
use crate::{VmError, vsock};

/// How often the boot is checked on.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct QemuVm {
    qemu: Helper,
    helpers: Vec<Helper>,
    console: Console,
    timeline: Timeline,
    vsock_uds: PathBuf,
    // Last: the work directory goes after every process that uses it.
    work_dir: WorkDir,
}

impl QemuVm {
    pub(super) fn new(
        qemu: Helper,
        helpers: Vec<Helper>,
        console: Console,
        timeline: Timeline,
        work_dir: WorkDir,
        vsock_uds: PathBuf,
    ) -> Self {
        Self {
            qemu,
            helpers,
            console,
            timeline,
            vsock_uds,
            work_dir,
        }
    }

    /// The pids of QEMU and its helpers, QEMU first.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        std::iter::once(&self.qemu)
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
                tracing::info!(timeline = %self.timeline(), "agent ready");
                return Ok(stream);
            }
            if Instant::now() >= deadline {
                return Err(VmError::BootTimeout {
                    port,
                    seconds: timeout.as_secs(),
                    timeline: self.timeline(),
                    console: self.console_tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// A new byte stream to guest `port`.
    pub fn connect(&self, port: u32) -> Result<UnixStream, VmError> {
        vsock::connect(&self.vsock_uds, port)
    }

    fn check_alive(&mut self) -> Result<(), VmError> {
        // Helpers first: when one dies QEMU often dies of it, and the helper
        // is what the error should name.
        for helper in self
            .helpers
            .iter_mut()
            .chain(std::iter::once(&mut self.qemu))
        {
            if let Some(status) = helper.exited() {
                let name = helper.name;
                let log = std::fs::read_to_string(self.work_dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let mut console = self.console.tail();
                if !log.trim().is_empty() {
                    console.push_str(&format!("\n[{name} log]\n{}", log.trim_end()));
                }
                return Err(VmError::HelperExited {
                    name,
                    status: status.to_string(),
                    timeline: self.timeline(),
                    console,
                });
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the guest to power itself off, as it does
    /// after the agent's DestroySandbox; then stops everything regardless.
    /// Returns whether the guest had powered off by itself.
    pub fn shutdown(mut self, timeout: Duration) -> bool {
        let clean = self.qemu.wait_timeout(timeout).is_some();
        self.stop_all();
        clean
    }

    /// Kills QEMU and its helpers now and removes the work directory.
    pub fn kill(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.qemu.kill();
        for helper in &mut self.helpers {
            helper.kill();
        }
        self.console.finish();
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.stop_all();
    }
}
