//! Publishing task events to containerd, through a bounded queue: a guest
//! can make the shim emit events (OOM kills, exits), and containerd can be
//! slow to take them, so the queue must not grow without end.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use containerd_shim::Context;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::publisher::RemotePublisher;
use tokio::sync::mpsc;

pub type Queued = (&'static str, Box<dyn MessageDyn>);

/// Events waiting for containerd. Far more than a pod's processes can
/// produce in exits; what overflows is dropped with a warning.
pub const EVENT_QUEUE: usize = 1024;

/// Events go out in the order they happened (a task's exit after its
/// start), from one background task, so that no answer waits on
/// containerd taking an event.
#[derive(Debug, Clone)]
pub struct Events {
    queue: mpsc::Sender<Queued>,
    dropped: std::sync::Arc<Throttle>,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        let (events, mut queue) = Self::channel(EVENT_QUEUE);
        let namespace = namespace.to_owned();
        tokio::spawn(async move {
            while let Some((topic, event)) = queue.recv().await {
                if let Err(err) = publisher
                    .publish(Context::default(), topic, &namespace, event)
                    .await
                {
                    tracing::warn!(%err, topic, "publishing an event");
                }
            }
        });
        events
    }

    /// Events and the queue they go to, holding at most `capacity`.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Queued>) {
        let (queue, receiver) = mpsc::channel(capacity);
        let events = Self {
            queue,
            dropped: std::sync::Arc::new(Throttle::new(Duration::from_secs(10), 1)),
        };
        (events, receiver)
    }

    /// Queues the event; when the queue is full it is dropped (the warning
    /// is rate-limited, as a guest may be what fills the queue).
    pub fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send((topic, event))
            && let Some(dropped) = self.dropped.allow()
        {
            tracing::warn!(
                topic,
                dropped,
                "containerd is not taking events: the queue is full, events are dropped"
            );
        }
    }
}

/// A token bucket for anything a guest can trigger: at most `burst` per
/// `per`. `allow` answers `Some(n)` when allowed, `n` being how many were
/// refused since the last allowed one (for the log), `None` otherwise.
#[derive(Debug)]
pub struct Throttle {
    per: Duration,
    burst: u32,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    tokens: u32,
    refill_at: Instant,
    refused: u64,
}

impl Throttle {
    pub fn new(per: Duration, burst: u32) -> Self {
        Self {
            per,
            burst,
            state: Mutex::new(ThrottleState {
                tokens: burst,
                refill_at: Instant::now() + per,
                refused: 0,
            }),
        }
    }

    pub fn allow(&self) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if now >= state.refill_at {
            state.tokens = self.burst;
            state.refill_at = now + self.per;
        }
        if state.tokens == 0 {
            state.refused += 1;
            return None;
        }
        state.tokens -= 1;
        Some(std::mem::take(&mut state.refused))
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut timestamp = Timestamp::new();
    timestamp.seconds = since.as_secs() as i64;
    timestamp.nanos = since.subsec_nanos() as i32;
    timestamp
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::events::task::TaskOOM;

    #[test]
    fn a_throttle_allows_its_burst_then_counts_what_it_refused() {
        let throttle = Throttle::new(Duration::from_secs(3600), 2);
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_rather_than_growing() {
        let (events, mut queue) = Events::channel(4);
        for _ in 0..1000 {
            events.publish("/tasks/oom", Box::new(TaskOOM::default()));
        }
        let mut queued = 0;
        while queue.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 4);
    }
}
