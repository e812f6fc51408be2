//! Publishing task events to containerd.

use std::time::SystemTime;

use containerd_shim::Context;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::publisher::RemotePublisher;

type Queued = (&'static str, Box<dyn MessageDyn>);

/// Events go out in the order they happened (a task's exit after its
/// start), from one background task, so that no answer waits on
/// containerd taking an event.
#[derive(Debug, Clone)]
pub struct Events {
    queue: tokio::sync::mpsc::UnboundedSender<Queued>,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        let (queue, mut events) = tokio::sync::mpsc::unbounded_channel::<Queued>();
        let namespace = namespace.to_owned();
        tokio::spawn(async move {
            while let Some((topic, event)) = events.recv().await {
                if let Err(err) = publisher
                    .publish(Context::default(), topic, &namespace, event)
                    .await
                {
                    tracing::warn!(%err, topic, "publishing an event");
                }
            }
        });
        Self { queue }
    }

    pub fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let _ = self.queue.send((topic, event));
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
