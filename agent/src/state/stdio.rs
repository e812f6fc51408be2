//! The agent's ends of a process's stdin, stdout and stderr, or of its tty.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use nix::cmsg_space;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::error::{AgentError, Result};

/// What a process was asked to connect.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioRequest {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// One output stream of a process. It is read by at most one client stream,
/// and knows when everything it will ever carry has been handed over.
pub struct Output {
    source: Mutex<Option<Reader>>,
    drained: watch::Sender<Option<u64>>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("drained", &*self.drained.borrow())
            .finish_non_exhaustive()
    }
}

impl Output {
    fn from_reader(reader: Reader) -> Arc<Self> {
        Arc::new(Self {
            source: Mutex::new(Some(reader)),
            drained: watch::Sender::new(None),
        })
    }

    /// A stream nobody asked for: connected to /dev/null, drained from the start.
    fn none() -> Arc<Self> {
        Arc::new(Self {
            source: Mutex::new(None),
            drained: watch::Sender::new(Some(0)),
        })
    }

    /// Hands the stream to its one reader.
    pub fn take(&self) -> Option<Reader> {
        self.source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Records that no more bytes will be delivered, and how many were.
    pub fn mark_drained(&self, bytes: u64) {
        self.drained.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(bytes);
                true
            } else {
                false
            }
        });
    }

    /// Waits until an attached stream has been read to its end and returns
    /// its byte count. A stream nobody has attached counts as 0 and is not
    /// waited for: its bytes stay in the pipe for a later reader.
    pub async fn drained(&self) -> u64 {
        if self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return 0;
        }
        let mut rx = self.drained.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(bytes) => bytes.unwrap_or(0),
            Err(_) => 0,
        }
    }
}

/// Where the client's stdin bytes go.
pub enum StdinSink {
    Pipe(pipe::Sender),
    /// The tty master: closing stdin sends end-of-file (^D) instead of closing.
    Tty(Writer),
}

impl std::fmt::Debug for StdinSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pipe(_) => "StdinSink::Pipe",
            Self::Tty(_) => "StdinSink::Tty",
        })
    }
}

impl StdinSink {
    pub async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Pipe(pipe) => pipe.write_all(data).await,
            Self::Tty(tty) => tty.write_all(data).await,
        }
    }
}

/// The agent's ends of one process's stdio.
#[derive(Debug)]
pub struct ProcessIo {
    pub stdin: tokio::sync::Mutex<Option<StdinSink>>,
    pub stdout: Arc<Output>,
    pub stderr: Arc<Output>,
    /// The tty master, kept for resizing.
    pub tty: Option<OwnedFd>,
}

impl ProcessIo {
    pub fn is_tty(&self) -> bool {
        self.tty.is_some()
    }

    /// Closes stdin: the process reads end-of-file.
    pub async fn close_stdin(&self) -> std::io::Result<()> {
        let mut stdin = self.stdin.lock().await;
        match stdin.as_mut() {
            Some(StdinSink::Tty(tty)) => {
                // ^D at the start of a line is end-of-file for the reader.
                tty.write_all(&[0x04]).await?;
                tty.flush().await
            }
            Some(StdinSink::Pipe(_)) => {
                stdin.take();
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Stdio being prepared for a process that does not exist yet.
#[derive(Debug)]
pub enum PendingStdio {
    /// Pipes (or /dev/null): the child's ends go to the runtime helper.
    Pipes { child: [OwnedFd; 3], io: ProcessIo },
    /// A tty: the runtime hands its master to this console socket.
    Tty { socket: ConsoleSocket },
}

impl PendingStdio {
    pub fn new(request: StdioRequest, console_socket_path: PathBuf) -> Result<Self> {
        if request.terminal {
            return Ok(Self::Tty {
                socket: ConsoleSocket::bind(console_socket_path, request)?,
            });
        }
        let (stdin_child, stdin) = if request.stdin {
            let (read, write) = pipe_pair()?;
            let sender = pipe::Sender::from_owned_fd(write)
                .map_err(|err| AgentError::io("stdin pipe", err))?;
            (read, Some(StdinSink::Pipe(sender)))
        } else {
            (dev_null()?, None)
        };
        let (stdout_child, stdout) = output_pipe(request.stdout)?;
        let (stderr_child, stderr) = output_pipe(request.stderr)?;
        Ok(Self::Pipes {
            child: [stdin_child, stdout_child, stderr_child],
            io: ProcessIo {
                stdin: tokio::sync::Mutex::new(stdin),
                stdout,
                stderr,
                tty: None,
            },
        })
    }
}

fn output_pipe(wanted: bool) -> Result<(OwnedFd, Arc<Output>)> {
    if !wanted {
        return Ok((dev_null()?, Output::none()));
    }
    let (read, write) = pipe_pair()?;
    let receiver =
        pipe::Receiver::from_owned_fd(read).map_err(|err| AgentError::io("output pipe", err))?;
    Ok((write, Output::from_reader(Box::pin(receiver))))
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|err| AgentError::io("creating a stdio pipe", err.into()))
}

fn dev_null() -> Result<OwnedFd> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|err| AgentError::io("opening /dev/null", err))
}

/// A Unix socket on which libcontainer hands over a new tty's master.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
    request: StdioRequest,
}

impl ConsoleSocket {
    fn bind(path: PathBuf, request: StdioRequest) -> Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|err| AgentError::io(format!("binding {}", path.display()), err))?;
        Ok(Self {
            listener,
            path,
            request,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the master and builds the process's stdio around it.
    pub async fn receive(self) -> Result<ProcessIo> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|err| AgentError::io("accepting on the console socket", err))?;
        let stream = stream
            .into_std()
            .and_then(|stream| stream.set_nonblocking(false).map(|()| stream))
            .map_err(|err| AgentError::io("console socket", err))?;
        // The runtime connects early and sends the master only once the
        // container's init has made it, so this read may wait a while.
        let master = tokio::task::spawn_blocking(move || receive_fd(stream.as_raw_fd()))
            .await
            .map_err(|err| AgentError::Runtime(format!("tty handover: {err}")))??;
        let reader = File::from(
            master
                .try_clone()
                .map_err(|err| AgentError::io("duplicating the tty", err))?,
        );
        let writer = File::from(
            master
                .try_clone()
                .map_err(|err| AgentError::io("duplicating the tty", err))?,
        );
        let stdout = if self.request.stdout {
            Output::from_reader(Box::pin(TtyReader(tokio::fs::File::from_std(reader))))
        } else {
            Output::none()
        };
        let stdin = self
            .request
            .stdin
            .then(|| StdinSink::Tty(Box::pin(tokio::fs::File::from_std(writer))));
        Ok(ProcessIo {
            stdin: tokio::sync::Mutex::new(stdin),
            stdout,
            stderr: Output::none(),
            tty: Some(master),
        })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_fd(socket: RawFd) -> Result<OwnedFd> {
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = cmsg_space!(RawFd);
    let message = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|err| AgentError::io("receiving the tty master", err.into()))?;
    let mut received = None;
    for cmsg in message
        .cmsgs()
        .map_err(|err| AgentError::io("reading the tty master message", err.into()))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: SCM_RIGHTS just installed `fd` in this process and
                // nothing else refers to it; wrapping it at once gives it a
                // single owner that closes it (extra ones are closed here).
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(owned);
            }
        }
    }
    received.ok_or_else(|| {
        AgentError::Runtime("the console socket message carried no tty master".into())
    })
}

/// A tty master reports EIO once the last process holding the other side
/// exits; that is the tty's end-of-file.
struct TtyReader(tokio::fs::File);

impl AsyncRead for TtyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(err)) if err.raw_os_error() == Some(libc::EIO) => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
