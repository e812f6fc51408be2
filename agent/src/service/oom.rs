//! OOM events: a watch on each container's memory.events.

use std::sync::{Arc, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use hull_proto::v1 as api;
use inotify::{Inotify, WatchMask};
use tokio::sync::broadcast;

use super::Agent;
use crate::cgroup;
use crate::state::Container;

impl Agent {
    /// Subscribes to OOM kills in every container of the sandbox.
    pub fn oom_events(&self) -> broadcast::Receiver<api::OomEvent> {
        self.oom_events.subscribe()
    }

    /// Starts reporting OOM kills of `container`. Without a memory controller
    /// there is no memory.events and nothing to report.
    pub(super) fn watch_oom(&self, container: &Arc<Container>) {
        let events_file = container.cgroup.join("memory.events");
        if !events_file.exists() {
            tracing::debug!(container = %container.id, "no memory controller: no OOM events");
            return;
        }
        let inotify = match Inotify::init() {
            Ok(inotify) => inotify,
            Err(err) => {
                tracing::warn!(%err, "inotify unavailable: no OOM events");
                return;
            }
        };
        if let Err(err) = inotify.watches().add(&events_file, WatchMask::MODIFY) {
            tracing::warn!(container = %container.id, %err, "cannot watch memory.events");
            return;
        }
        let Ok(mut changes) = inotify.into_event_stream([0u8; 1024]) else {
            return;
        };
        let id = container.id.clone();
        let dir = container.cgroup.clone();
        let sender = self.oom_events.clone();
        let task = tokio::spawn(async move {
            let mut seen = cgroup::oom_kills(&dir).unwrap_or(0);
            while changes.next().await.is_some() {
                let Some(kills) = cgroup::oom_kills(&dir) else {
                    break;
                };
                // memory.events changes for other reasons too (high, max);
                // only a higher oom_kill count is an OOM kill.
                if kills > seen {
                    seen = kills;
                    let at = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                        .unwrap_or(0);
                    tracing::info!(container = %id, kills, "OOM kill");
                    let _ = sender.send(api::OomEvent {
                        container_id: id.clone(),
                        at_unix_nanos: at,
                    });
                }
            }
        });
        self.oom_watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(container.id.clone(), task.abort_handle());
    }

    pub(super) fn stop_oom_watch(&self, container_id: &str) {
        if let Some(task) = self
            .oom_watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(container_id)
        {
            task.abort();
        }
    }
}
