//! Container lifecycle through youki's `libcontainer`, run in a helper process.
//!
//! `libcontainer` clones the container's processes and runs Rust code in the
//! clones before they `exec`. Cloning a multi-threaded tokio process that way
//! can deadlock the clone on a lock another thread held (malloc's, tracing's).
//! So every operation runs in a short-lived, single-threaded copy of this
//! binary, `hull-agent runtime-helper`, the way a shim runs `runc`. The
//! container's init process is then orphaned to the agent, which reaps it.
//!
//! The helper reads one [`Request`] as JSON on stdin and writes one
//! [`Response`] as a JSON line on stdout. A container's stdin, stdout and
//! stderr reach it as file descriptors [`STDIO_FDS`].

mod client;
mod exec_seccomp;
mod helper;

pub use client::Runtime;
pub use helper::run_helper;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the helper finds the container's stdin, stdout and stderr.
pub const STDIO_FDS: [i32; 3] = [3, 4, 5];

/// Whether the helper got the container's stdio as [`STDIO_FDS`] or is to hand
/// out a tty through a console socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StdioSetup {
    Fds,
    ConsoleSocket(PathBuf),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Operation {
    Create {
        bundle: PathBuf,
        stdio: StdioSetup,
    },
    Start,
    Exec {
        process_json: PathBuf,
        stdio: StdioSetup,
    },
    Kill {
        signal: i32,
        all: bool,
    },
    Pause,
    Resume,
    Update {
        resources_json: PathBuf,
    },
    Delete {
        force: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// libcontainer's state root.
    pub root: PathBuf,
    pub container_id: String,
    pub operation: Operation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Done,
    Pid(i32),
    Failed(String),
}
