//! A container: its bundle, its init process, its exec'd processes and the
//! host mounts that feed its rootfs and volumes.

use std::collections::HashMap;
use std::path::PathBuf;

use super::seam::HostResources;
use super::{Process, ProcessId, Status};
use crate::error::{Result, ShimError};

#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// The host mounts behind its rootfs and volumes.
    pub host: Box<dyn HostResources>,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of task {}", self.id)))
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = self.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of task {id}")))
    }

    /// Adds an exec'd process; the exec id must be new and the container
    /// running.
    pub fn add_exec(&mut self, process: Process) -> Result<()> {
        let exec = process.id.exec.clone().unwrap_or_default();
        if self.execs.contains_key(&exec) {
            return Err(ShimError::AlreadyExists(process.id.to_string()));
        }
        if self.init.status() != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "task {} is {}: cannot exec in it",
                self.id,
                self.init.status().name()
            )));
        }
        self.execs.insert(exec, process);
        Ok(())
    }

    /// Every process, init first.
    pub fn processes_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        std::iter::once(&mut self.init).chain(self.execs.values_mut())
    }

    pub fn init_id(&self) -> ProcessId {
        self.init.id.clone()
    }
}
