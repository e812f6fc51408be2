//! The messages of the control channel, and its client.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::timeline::BootTimeline;
use crate::vstate::run_control::RunState;

/// Longest line either side accepts, so a bad peer cannot make the other
/// buffer without end.
pub(super) const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The run state and the boot timeline.
    State,
    /// Takes every vCPU out of the guest; returns once they are all out.
    Pause,
    Resume,
    /// Ends the VM: the VMM exits once its vCPUs have left the guest.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Response {
    /// The run state after the request.
    pub state: RunState,
    pub timeline: BootTimeline,
    /// Why the request failed; `None` when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: the VMM closed the connection without answering")]
    NoAnswer { path: String },
    #[error("control socket {path}: bad answer {answer:?}: {source}")]
    BadAnswer {
        path: String,
        answer: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the VMM refused {request:?}: {reason}")]
    Refused { request: Request, reason: String },
}

/// Sends one request to the VMM listening on `socket` and waits up to
/// `timeout` for the answer.
pub fn request(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    let path = socket.display().to_string();
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(&request).expect("a request always serializes");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(MAX_LINE as u64)
        .read_line(&mut answer)
        .map_err(io)?;
    if answer.is_empty() {
        return Err(ControlError::NoAnswer { path });
    }
    let response: Response =
        serde_json::from_str(&answer).map_err(|source| ControlError::BadAnswer {
            path: path.clone(),
            answer: answer.trim_end().to_owned(),
            source,
        })?;
    match response.error {
        Some(reason) => Err(ControlError::Refused { request, reason }),
        None => Ok(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_op() {
        assert_eq!(
            serde_json::to_string(&Request::Pause).unwrap(),
            r#"{"op":"pause"}"#
        );
        let parsed: Request = serde_json::from_str(r#"{"op":"stop"}"#).unwrap();
        assert_eq!(parsed, Request::Stop);
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
    }

    #[test]
    fn a_response_without_error_omits_it() {
        let response = Response {
            state: RunState::Running,
            timeline: BootTimeline {
                vmm_start_ns: 1,
                vm_built_ns: Some(2),
                kernel_entry_ns: None,
            },
            error: None,
        };
        let line = serde_json::to_string(&response).unwrap();
        assert!(!line.contains("error"), "{line}");
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), response);
    }
}
