//! ReadOutput, WriteStdin, CloseStdin and ResizeTty.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use hull_proto::v1 as api;
use tokio::io::AsyncReadExt;

use super::Agent;
use crate::error::{AgentError, Result};
use crate::state::stdio::Output;

/// Bytes read per output chunk.
const CHUNK: usize = 64 * 1024;

/// A process's output, as it is produced.
pub type OutputBytes = Pin<Box<dyn Stream<Item = Result<Vec<u8>>> + Send>>;

/// Marks the output drained when the stream ends, whether by end-of-file or
/// because the client went away: either way nothing more will be delivered,
/// and WaitProcess must not wait for it.
struct DrainOnDrop {
    output: Arc<Output>,
    bytes: u64,
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        self.output.mark_drained(self.bytes);
    }
}

impl Agent {
    pub fn read_output(&self, request: api::ReadOutputRequest) -> Result<OutputBytes> {
        let (_, process) = self.process(request.process.as_ref())?;
        let (name, output) = match api::OutputStream::try_from(request.stream) {
            Ok(api::OutputStream::Stdout) => ("stdout", Arc::clone(&process.io.stdout)),
            Ok(api::OutputStream::Stderr) => ("stderr", Arc::clone(&process.io.stderr)),
            _ => {
                return Err(AgentError::invalid(
                    "stream",
                    format!("{} is neither stdout nor stderr", request.stream),
                ));
            }
        };
        let reader = output.take().ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "{name} of {} was not requested or is already being read",
                process.name
            ))
        })?;
        let guard = DrainOnDrop { output, bytes: 0 };
        let label = format!("{name} of {}", process.name);
        // The guard lives in the stream's state, so it is dropped exactly when
        // the transport has taken the last chunk and polled for the next.
        let stream = futures::stream::unfold(
            (reader, guard, label),
            |(mut reader, mut guard, label)| async move {
                let mut buffer = vec![0u8; CHUNK];
                match reader.read(&mut buffer).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buffer.truncate(n);
                        guard.bytes += n as u64;
                        Some((Ok(buffer), (reader, guard, label)))
                    }
                    Err(err) => {
                        tracing::warn!(%label, %err, "output read failed");
                        None
                    }
                }
            },
        );
        Ok(stream.boxed())
    }

    /// Copies a client's stdin stream into the process. The first chunk names
    /// the process.
    pub async fn write_stdin(
        &self,
        mut chunks: impl Stream<Item = Result<api::StdinChunk>> + Unpin,
    ) -> Result<api::WriteStdinResponse> {
        let first = match chunks.next().await {
            Some(chunk) => chunk?,
            None => return Ok(api::WriteStdinResponse { bytes_written: 0 }),
        };
        let (_, process) = self.process(first.process.as_ref())?;
        let mut stdin = process.io.stdin.lock().await;
        let sink = stdin.as_mut().ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "stdin of {} was not requested or is closed",
                process.name
            ))
        })?;
        let mut written = 0u64;
        let mut data = first.data;
        loop {
            sink.write_all(&data)
                .await
                .map_err(|err| AgentError::io(format!("writing stdin of {}", process.name), err))?;
            written += data.len() as u64;
            match chunks.next().await {
                Some(chunk) => data = chunk?.data,
                None => break,
            }
        }
        Ok(api::WriteStdinResponse {
            bytes_written: written,
        })
    }

    pub async fn close_stdin(
        &self,
        request: api::CloseStdinRequest,
    ) -> Result<api::CloseStdinResponse> {
        let (_, process) = self.process(request.process.as_ref())?;
        process
            .io
            .close_stdin()
            .await
            .map_err(|err| AgentError::io(format!("closing stdin of {}", process.name), err))?;
        Ok(api::CloseStdinResponse {})
    }

    pub fn resize_tty(&self, request: api::ResizeTtyRequest) -> Result<api::ResizeTtyResponse> {
        let (_, process) = self.process(request.process.as_ref())?;
        let tty = process.io.tty.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition(format!("process {} has no tty", process.name))
        })?;
        let rows = u16::try_from(request.rows)
            .map_err(|_| AgentError::invalid("rows", format!("{} is too large", request.rows)))?;
        let cols = u16::try_from(request.cols)
            .map_err(|_| AgentError::invalid("cols", format!("{} is too large", request.cols)))?;
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(tty, size).map_err(|err| {
            AgentError::io(format!("resizing the tty of {}", process.name), err.into())
        })?;
        Ok(api::ResizeTtyResponse {})
    }
}
