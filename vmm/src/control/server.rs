//! The VMM's side of the control channel: one thread answering requests,
//! one client at a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::protocol::{MAX_LINE, Request, Response};
use crate::timeline::TimelineRecorder;
use crate::vstate::run_control::{RunControl, RunState};

/// How long a client may take to send its request; the channel serves one
/// client at a time, so a silent one must not hold it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the vCPUs get to leave the guest when paused or stopped.
const VCPU_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes every vCPU out of KVM_RUN (by signalling its thread).
pub trait VcpuKicker: Send + Sync {
    fn kick(&self);
}

#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    control: Arc<RunControl>,
    kicker: Arc<dyn VcpuKicker>,
    timeline: Arc<TimelineRecorder>,
}

/// The control socket, bound but not served yet: the VMM binds it while it
/// may still create files in its directory (before it gives up root), and
/// starts the thread once capabilities are gone (they are per thread).
#[derive(Debug)]
pub struct BoundControl {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl BoundControl {
    /// Listens on `path`, which must not exist yet.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            listener: Some(UnixListener::bind(path)?),
            path: path.to_owned(),
        })
    }

    /// Makes the socket `uid`'s and `gid`'s, for a VMM about to become that
    /// user: it wakes its own accept by connecting, when it stops, and
    /// connecting takes write permission on the socket.
    pub fn give_to(&self, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))
    }

    /// Starts answering requests, on a thread of its own.
    pub fn serve(
        mut self,
        control: Arc<RunControl>,
        kicker: Arc<dyn VcpuKicker>,
        timeline: Arc<TimelineRecorder>,
    ) -> std::io::Result<ControlServer> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| std::io::Error::other("the control socket is served already"))?;
        let closing = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            control,
            kicker,
            timeline,
        };
        let thread = {
            let closing = Arc::clone(&closing);
            std::thread::Builder::new()
                .name("vmm-control".into())
                .spawn(move || serve(&listener, &shared, &closing))
        };
        // On failure `self` still removes the socket.
        let thread = thread?;
        Ok(ControlServer {
            path: std::mem::take(&mut self.path),
            closing,
            thread: Some(thread),
        })
    }
}

impl Drop for BoundControl {
    fn drop(&mut self) {
        // Served, the server removes it (the path was taken).
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ControlServer {
    /// Listens on `path`, which must not exist yet, and serves it.
    pub fn start(
        path: &Path,
        control: Arc<RunControl>,
        kicker: Arc<dyn VcpuKicker>,
        timeline: Arc<TimelineRecorder>,
    ) -> std::io::Result<Self> {
        BoundControl::bind(path)?.serve(control, kicker, timeline)
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wakes the accept; the thread then sees `closing`.
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, shared: &Shared, closing: &AtomicBool) {
    for stream in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                if let Err(err) = serve_client(stream, shared) {
                    tracing::debug!(%err, "control client");
                }
            }
            Err(err) => tracing::warn!(%err, "accepting a control client"),
        }
    }
}

fn serve_client(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    loop {
        let mut line = String::new();
        if (&mut reader).take(MAX_LINE as u64).read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request = serde_json::from_str::<Request>(&line);
        let stop = matches!(request, Ok(Request::Stop));
        let response = match request {
            Ok(request) => answer(request, shared),
            Err(err) => respond(shared, Some(format!("bad request: {err}"))),
        };
        let mut reply = serde_json::to_string(&response).map_err(std::io::Error::other)?;
        reply.push('\n');
        writer.write_all(reply.as_bytes())?;
        if stop {
            // Answered first: once the vCPUs are out the process may exit.
            if let Err(err) = shared.control.stop(|| shared.kicker.kick(), VCPU_TIMEOUT) {
                tracing::error!(%err, "stopping the vCPUs");
            }
            return Ok(());
        }
    }
}

fn answer(request: Request, shared: &Shared) -> Response {
    let error = match request {
        Request::State => None,
        Request::Pause => shared
            .control
            .pause(|| shared.kicker.kick(), VCPU_TIMEOUT)
            .err()
            .map(|err| err.to_string()),
        Request::Resume => shared.control.resume().err().map(|err| err.to_string()),
        Request::Stop => {
            let mut response = respond(shared, None);
            response.state = RunState::Stopping;
            return response;
        }
    };
    respond(shared, error)
}

fn respond(shared: &Shared, error: Option<String>) -> Response {
    Response {
        state: shared.control.state(),
        timeline: shared.timeline.snapshot(),
        error,
    }
}
