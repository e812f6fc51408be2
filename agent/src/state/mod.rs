//! What the agent knows about its containers and processes.

mod container;
mod process;
pub mod stdio;

pub use container::{Container, Status};
pub use process::{Exit, Finished, Process};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{AgentError, Result};

/// The containers of the sandbox, by id.
#[derive(Debug, Default)]
pub struct Containers {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ready: HashMap<String, Arc<Container>>,
    /// Ids being created, so that a second create with the same id fails at
    /// once instead of racing the first.
    reserved: HashSet<String>,
}

/// Holds an id while its container is created; dropping it without
/// [`Reservation::commit`] frees the id again.
#[derive(Debug)]
pub struct Reservation<'a> {
    containers: &'a Containers,
    id: String,
}

impl Containers {
    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.lock()
            .ready
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::not_found(format!("container {id:?}")))
    }

    pub fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        let mut inner = self.lock();
        if inner.ready.contains_key(id) || !inner.reserved.insert(id.to_owned()) {
            return Err(AgentError::AlreadyExists {
                what: format!("container {id:?}"),
            });
        }
        Ok(Reservation {
            containers: self,
            id: id.to_owned(),
        })
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Container>> {
        self.lock().ready.remove(id)
    }

    pub fn all(&self) -> Vec<Arc<Container>> {
        self.lock().ready.values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Reservation<'_> {
    pub fn commit(self, container: Arc<Container>) {
        // Dropping `self` afterwards releases the reservation.
        self.containers
            .lock()
            .ready
            .insert(self.id.clone(), container);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.containers.lock().reserved.remove(&self.id);
    }
}
