//! Helper processes that die with their owner.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when dropped, so no failure
/// path can leak it.
#[derive(Debug)]
pub struct Helper {
    pub name: &'static str,
    child: Child,
}

impl Helper {
    pub fn spawn(name: &'static str, command: &mut Command) -> Result<Self, crate::VmError> {
        let child = command.spawn().map_err(|source| crate::VmError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Self { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process if it still runs, and reaps it.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a process ended, for messages that follow its name: "was killed by
/// SIGKILL", "exited with status 1".
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
            Ok(signal) => format!("was killed by {}", signal.as_str()),
            Err(_) => format!("was killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

/// Finds `program` in `PATH` unless it is a path already.
pub fn find_program(program: &str) -> Result<std::path::PathBuf, crate::VmError> {
    let missing = |reason: String| crate::VmError::MissingProgram {
        program: program.to_owned(),
        reason,
    };
    if program.contains('/') {
        let path = std::path::PathBuf::from(program);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(missing(format!("{program} does not exist")))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| missing("it is not in PATH".to_owned()))
}
