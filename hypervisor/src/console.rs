//! Copies the guest's serial console to its log file, remembering when the
//! first line came and the last lines for error messages.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many console lines an error message carries.
const TAIL_LINES: usize = 40;

#[derive(Debug, Default)]
struct Seen {
    first_line: Option<Duration>,
    tail: VecDeque<String>,
}

#[derive(Debug)]
pub struct Console {
    seen: Arc<Mutex<Seen>>,
    copier: Option<JoinHandle<()>>,
}

impl Console {
    /// Starts copying `output` (the VM's serial console) to `log`.
    pub fn start(
        output: impl Read + Send + 'static,
        log: &Path,
        started: Instant,
    ) -> std::io::Result<Self> {
        let mut file = File::create(log)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        let copier = std::thread::Builder::new()
            .name("vm-console".into())
            .spawn(move || {
                for line in BufReader::new(output).split(b'\n') {
                    let Ok(line) = line else { break };
                    let _ = file.write_all(&line);
                    let _ = file.write_all(b"\n");
                    let text = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_owned();
                    let mut seen = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    seen.first_line.get_or_insert_with(|| started.elapsed());
                    if seen.tail.len() == TAIL_LINES {
                        seen.tail.pop_front();
                    }
                    seen.tail.push_back(text);
                }
            })?;
        Ok(Self {
            seen,
            copier: Some(copier),
        })
    }

    pub fn first_line(&self) -> Option<Duration> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_line
    }

    /// The last console lines, oldest first.
    pub fn tail(&self) -> String {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits for the copy to finish; the VM process must have exited.
    pub fn finish(&mut self) {
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
    }
}
