//! Copies a process's stdio between containerd's FIFOs and the agent's
//! streams. Output is copied until the agent's stream ends, which it does
//! only after the process exited and its output was drained, so nothing is
//! lost at exit.

use std::io::Read;
use std::path::PathBuf;

use futures::StreamExt;
use hull_proto::v1 as api;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::agent::Agent;
use crate::error::{Result, ShimError};
use crate::task::{ProcessId, StdioPaths};

const STDIN_CHUNK: usize = 32 * 1024;
/// How long the agent gets to answer the CloseStdin at the end of stdin.
const CLOSE_STDIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The copiers of one process.
#[derive(Debug, Default)]
pub struct Copiers {
    /// Each hands its FIFO back when its stream ends, so that a lost
    /// process's report can follow the output before the reader sees end
    /// of file.
    outputs: Vec<JoinHandle<Output>>,
    stdin: Option<StdinCopier>,
}

#[derive(Debug)]
struct StdinCopier {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Copiers {
    /// Attaches to the agent's output streams (before the process starts,
    /// so that nothing it writes is missed) and starts copying.
    pub async fn attach(agent: &Agent, id: &ProcessId, paths: &StdioPaths) -> Result<Self> {
        let mut copiers = Self::default();
        let mut outputs = vec![(api::OutputStream::Stdout, &paths.stdout)];
        if !paths.terminal {
            outputs.push((api::OutputStream::Stderr, &paths.stderr));
        }
        for (stream, path) in outputs {
            if path.is_empty() {
                continue;
            }
            // Read-write, so the open neither blocks nor fails when
            // containerd has not opened its end yet.
            let mut fifo = pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)
                .map_err(ShimError::io(format!("opening {path}")))?;
            let mut chunks = agent
                .clone()
                .read_output(api::ReadOutputRequest {
                    process: Some(id.to_agent()),
                    stream: stream as i32,
                })
                .await?
                .into_inner();
            copiers.outputs.push(tokio::spawn(async move {
                while let Some(Ok(chunk)) = chunks.next().await {
                    if fifo.write_all(&chunk.data).await.is_err() {
                        break;
                    }
                }
                Output { stream, fifo }
            }));
        }
        if !paths.stdin.is_empty() {
            copiers.stdin = Some(StdinCopier {
                path: PathBuf::from(&paths.stdin),
                task: copy_stdin(agent.clone(), id.to_agent(), PathBuf::from(&paths.stdin)),
            });
        }
        Ok(copiers)
    }

    /// Waits up to `timeout` until every output was copied (a copier still
    /// busy then is stopped, so that its reader sees end of file), then
    /// stops copying stdin. Returns the output FIFOs, still open.
    pub async fn finish(mut self, timeout: std::time::Duration) -> Vec<Output> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut fifos = Vec::new();
        for mut output in std::mem::take(&mut self.outputs) {
            match tokio::time::timeout_at(deadline, &mut output).await {
                Ok(copied) => fifos.extend(copied.ok()),
                Err(_) => {
                    tracing::warn!("output did not drain");
                    output.abort();
                }
            }
        }
        self.close_stdin();
        fifos
    }

    /// Stops copying stdin (CloseIO, or the process ended).
    pub fn close_stdin(&mut self) {
        if let Some(stdin) = self.stdin.take() {
            unblock_fifo_reader(&stdin.path);
            stdin.task.abort();
        }
    }
}

impl Drop for Copiers {
    fn drop(&mut self) {
        self.close_stdin();
        for output in &self.outputs {
            output.abort();
        }
    }
}

/// Reads the stdin FIFO on a blocking thread (opening it waits for
/// containerd's writer) and streams it to the agent; at end of file the
/// process's stdin is closed.
fn copy_stdin(mut agent: Agent, process: api::ProcessRef, path: PathBuf) -> JoinHandle<()> {
    let (chunks, receiver) = tokio::sync::mpsc::channel::<api::StdinChunk>(8);
    let reader_process = process.clone();
    std::thread::spawn(move || {
        let Ok(mut fifo) = std::fs::File::open(&path) else {
            return;
        };
        let mut buffer = vec![0u8; STDIN_CHUNK];
        loop {
            match fifo.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let chunk = api::StdinChunk {
                        process: Some(reader_process.clone()),
                        data: buffer[..n].to_vec(),
                    };
                    if chunks.blocking_send(chunk).is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        if let Err(err) = agent.write_stdin(stream).await {
            tracing::debug!(%err, "copying stdin");
        }
        // Bounded: a guest that does not answer must not keep this task.
        let closed = agent.close_stdin(api::CloseStdinRequest {
            process: Some(process),
        });
        if tokio::time::timeout(CLOSE_STDIN_TIMEOUT, closed)
            .await
            .is_err()
        {
            tracing::warn!("the agent did not answer CloseStdin");
        }
    })
}

/// One output FIFO of a process.
#[derive(Debug)]
pub struct Output {
    stream: api::OutputStream,
    fifo: pipe::Sender,
}

/// Tells whoever reads a lost process's output why it was lost, after
/// everything it wrote: `ctr` prints it, and in a CRI container log it
/// becomes the termination message of a pod with `FallbackToLogsOnError`.
/// It goes to stderr, or stdout when that is all there is (a tty).
pub async fn report_lost(outputs: Vec<Output>, message: &str) {
    let stderr = outputs
        .iter()
        .position(|output| output.stream == api::OutputStream::Stderr);
    let Some(mut output) = outputs.into_iter().nth(stderr.unwrap_or_default()) else {
        return;
    };
    let line = format!("hull: {message}\n");
    if let Err(err) = output.fifo.write_all(line.as_bytes()).await {
        tracing::debug!(%err, "reporting a lost process");
    }
}

/// A reader blocked opening a FIFO waits for a writer: be that writer for a
/// moment, so the reader sees end of file and its thread ends.
fn unblock_fifo_reader(path: &PathBuf) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}
