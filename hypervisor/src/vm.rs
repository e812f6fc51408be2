//! A running VM, whichever backend started it: the VMM process (QEMU or
//! hull-vmm), its helpers, its console and its hybrid vsock socket.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hull_vmm::control::{self, Request};

use crate::console::Console;
use crate::process::Helper;
use crate::timeline::Timeline;
use crate::vsock::HostVsock;
use crate::work_dir::WorkDir;
use crate::{VmError, vsock};

/// How often the boot is checked on.
const POLL: Duration = Duration::from_millis(100);
/// Between attempts to connect to an agent that has called.
const RETRY: Duration = Duration::from_millis(20);
/// How long a control request may take (a pause waits for every vCPU).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Vm {
    vmm: Helper,
    helpers: Vec<Helper>,
    console: Console,
    timeline: Timeline,
    vsock: HostVsock,
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
        vsock: HostVsock,
        control_socket: Option<PathBuf>,
    ) -> Self {
        Self {
            vmm,
            helpers,
            console,
            timeline,
            vsock,
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
        &self.vsock.uds
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

    /// Waits for the guest's call on the ready port (see
    /// [`crate::VmConfig::agent_ready_port`]), then connects to the agent
    /// on `port` and returns that first connection. Fails with the console
    /// and timeline when a process of the VM exits or time runs out.
    pub fn wait_for_agent(&mut self, port: u32, timeout: Duration) -> Result<UnixStream, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let Some(ready) = &self.vsock.ready else {
                break;
            };
            if ready.wait(POLL)? {
                self.vsock.ready = None;
                tracing::debug!(after = ?self.timeline.started.elapsed(), "the guest called");
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.boot_timeout(
                    port,
                    timeout,
                    "the guest never called its ready port",
                ));
            }
        }
        loop {
            self.check_alive()?;
            let attempt = vsock::connect(&self.vsock.uds, port);
            match attempt {
                Ok(stream) => {
                    self.timeline.agent_ready = Some(self.timeline.started.elapsed());
                    self.timeline.kernel_entry = self.kernel_entry();
                    tracing::info!(timeline = %self.timeline(), "agent ready");
                    return Ok(stream);
                }
                Err(err) if Instant::now() >= deadline => {
                    return Err(self.boot_timeout(
                        port,
                        timeout,
                        &format!("the guest called, then {err}"),
                    ));
                }
                // The agent listens before it calls, so this is rare.
                Err(err) => tracing::debug!(%err, "connecting to the agent"),
            }
            std::thread::sleep(RETRY);
        }
    }

    fn boot_timeout(&self, port: u32, timeout: Duration, waited_for: &str) -> VmError {
        VmError::BootTimeout {
            port,
            waited_for: waited_for.to_owned(),
            seconds: timeout.as_secs(),
            timeline: Box::new(self.timeline()),
            console: self.console_tail(),
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
        vsock::connect(&self.vsock.uds, port)
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
        // The helper's log is written by the helper, which does what the
        // guest asks of it: only its end is read.
        let helper_log = crate::console::log_tail(
            &self.work_dir.path().join(format!("{name}.log")),
            crate::error::HELPER_LOG_TAIL,
        );
        Err(VmError::HelperExited {
            name,
            pid,
            status: crate::process::describe_exit(status),
            timeline: Box::new(self.timeline()),
            console: self.console.tail(),
            helper_log,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    /// What the fake VMM saw, in order.
    #[derive(Debug, PartialEq)]
    enum Seen {
        HostConnect,
        GuestCalled,
    }

    /// A VM whose "VMM" is `sleep`, and a thread in place of the VMM's
    /// vsock: it serves `CONNECT` on the hybrid socket and makes the
    /// guest's call after `call_after`.
    fn fake_vm(dir: &Path, call_after: Duration) -> (Vm, mpsc::Receiver<Seen>) {
        let work_dir = WorkDir::create(&dir.join("w")).expect("work dir");
        let uds = work_dir.path().join("vsock.uds");
        let vsock = HostVsock::listen(uds.clone(), 1025).expect("ready socket");
        let listener = UnixListener::bind(&uds).expect("hybrid socket");
        let (seen, heard) = mpsc::channel();
        let called = seen.clone();
        std::thread::spawn(move || {
            std::thread::sleep(call_after);
            let mut ready = uds.into_os_string();
            ready.push("_1025");
            // Told first: the host may connect as soon as the call is made.
            called.send(Seen::GuestCalled).expect("send");
            UnixStream::connect(ready).expect("the guest's call");
        });
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.expect("accept");
                let _ = seen.send(Seen::HostConnect);
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).expect("read");
                let _ = stream.write_all(b"OK 1073741824\n");
            }
        });
        let mut sleep = Command::new("sleep");
        sleep.arg("30").stdout(Stdio::piped());
        let mut vmm = Helper::spawn("hull-vmm", &mut sleep).expect("spawn");
        let output = vmm.child().stdout.take().expect("stdout");
        let started = Instant::now();
        let console = Console::start(output, &dir.join("console.log"), started).expect("console");
        let vm = Vm::new(
            vmm,
            Vec::new(),
            console,
            Timeline::new(started),
            work_dir,
            vsock,
            None,
        );
        (vm, heard)
    }

    #[test]
    fn the_host_connects_only_after_the_guest_called() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut vm, heard) = fake_vm(dir.path(), Duration::from_millis(500));
        vm.wait_for_agent(1024, Duration::from_secs(10))
            .expect("agent");
        assert_eq!(
            heard.try_iter().collect::<Vec<_>>(),
            [Seen::GuestCalled, Seen::HostConnect]
        );
        let ready = vm.work_dir().join("vsock.uds_1025");
        assert!(!ready.exists(), "the ready socket stays after the call");
    }

    #[test]
    fn a_guest_that_never_calls_times_out_saying_so() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut vm, heard) = fake_vm(dir.path(), Duration::from_secs(60));
        let err = vm
            .wait_for_agent(1024, Duration::from_millis(300))
            .expect_err("no call")
            .to_string();
        assert!(
            err.contains("the guest never called its ready port"),
            "{err}"
        );
        assert!(heard.try_iter().next().is_none(), "the host connected");
    }
}
