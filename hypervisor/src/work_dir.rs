//! A VM's private directory of sockets and helper logs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::VmError;
use crate::process::Helper;
use crate::timeline::Timeline;

/// How long a helper may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Removed with the VM, or with a start that failed half-way.
#[derive(Debug)]
pub(crate) struct WorkDir(PathBuf);

impl WorkDir {
    pub(crate) fn create(path: &Path) -> Result<Self, VmError> {
        std::fs::create_dir_all(path)
            .map_err(|err| VmError::io(format!("creating {}", path.display()), err))?;
        Ok(Self(path.to_owned()))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// A new log file for a helper's stderr.
    pub(crate) fn log_file(&self, name: &str) -> Result<File, VmError> {
        let path = self.0.join(name);
        File::create(&path).map_err(|err| VmError::io(format!("creating {}", path.display()), err))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `helper` to create `socket`; fails if it exits first.
pub(crate) fn wait_for_socket(helper: &mut Helper, socket: &Path) -> Result<(), VmError> {
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    while !socket.exists() {
        if let Some(status) = helper.exited() {
            return Err(VmError::HelperExited {
                name: helper.name,
                pid: helper.pid(),
                status: crate::process::describe_exit(status),
                timeline: Box::new(Timeline::new(Instant::now())),
                console: String::new(),
                // Helpers log to `<name>.log` beside their sockets.
                helper_log: socket
                    .parent()
                    .map(|dir| {
                        crate::console::log_tail(
                            &dir.join(format!("{}.log", helper.name)),
                            crate::error::HELPER_LOG_TAIL,
                        )
                    })
                    .unwrap_or_default(),
            });
        }
        if Instant::now() >= deadline {
            return Err(VmError::io(
                helper.name,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{} did not appear in {SOCKET_TIMEOUT:?}", socket.display()),
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
