//! Audit push: every `audit`-target tracing event (denials, credential use) is also copied
//! into a bounded buffer and sent in batches to `POST /v1/sandboxes/{id}/events`.
//!
//! Owns: the tracing [`AuditLayer`] that captures events as JSON objects, the bounded
//! [`AuditBuffer`] (drop-oldest, counted), and the pusher task.
//! Must never: block the data plane (capture is a short mutex push), grow without bound while
//! the gateway is away, or add fields the audit event did not carry (no secrets exist there).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use palisade_api::AuditEvents;
use parking_lot::Mutex;
use prometheus::IntCounter;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use super::backoff::Backoff;
use super::client::GatewayClient;
use super::jwt::JwtStore;
use super::settings::SandboxId;

/// Events kept while the gateway is away; older ones are dropped first.
pub const AUDIT_BUFFER_CAPACITY: usize = 4096;
/// Events per request (the gateway accepts at most 256).
pub const AUDIT_BATCH: usize = 256;
/// How long events may wait to be batched.
pub const AUDIT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

type Event = Map<String, Value>;

/// The bounded queue between the tracing layer and the pusher.
#[derive(Debug)]
pub struct AuditBuffer {
    queue: Mutex<VecDeque<Event>>,
    capacity: usize,
    notify: Notify,
    pub dropped: IntCounter,
}

impl AuditBuffer {
    pub fn new(capacity: usize) -> anyhow::Result<Arc<Self>> {
        let dropped = IntCounter::new(
            "palisade_sidecar_audit_events_dropped_total",
            "Audit events dropped (oldest first) because the buffer was full while the gateway was away",
        )?;
        Ok(Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            notify: Notify::new(),
            dropped,
        }))
    }

    /// Append, dropping the oldest when full.
    pub fn push(&self, event: Event) {
        let mut q = self.queue.lock();
        while q.len() >= self.capacity {
            q.pop_front();
            self.dropped.inc();
        }
        q.push_back(event);
        let full_batch = q.len() >= AUDIT_BATCH;
        drop(q);
        if full_batch {
            self.notify.notify_one();
        }
    }

    /// Take up to `n` of the oldest events.
    pub fn take(&self, n: usize) -> Vec<Event> {
        let mut q = self.queue.lock();
        let n = n.min(q.len());
        q.drain(..n).collect()
    }

    /// Put back a batch that could not be sent (in front, keeping the bound).
    pub fn requeue(&self, batch: Vec<Event>) {
        let mut q = self.queue.lock();
        for e in batch.into_iter().rev() {
            if q.len() >= self.capacity {
                // The requeued ones are the oldest: drop them rather than newer events.
                self.dropped.inc();
                continue;
            }
            q.push_front(e);
        }
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }
}

/// Captures `target: "audit"` events into an [`AuditBuffer`].
#[derive(Debug, Clone)]
pub struct AuditLayer(pub Arc<AuditBuffer>);

struct JsonVisitor<'a>(&'a mut Event);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "audit" {
            return;
        }
        let mut map = Event::new();
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        map.insert("ts".into(), Value::from(ts));
        map.insert(
            "level".into(),
            Value::from(event.metadata().level().as_str().to_ascii_lowercase()),
        );
        event.record(&mut JsonVisitor(&mut map));
        self.0.push(map);
    }
}

/// Send batches forever; when the gateway is away, keep (bounded) and retry with backoff.
pub async fn push_loop(
    buffer: Arc<AuditBuffer>,
    client: GatewayClient,
    sandbox: SandboxId,
    jwt: Arc<JwtStore>,
    pushed: IntCounter,
) {
    let path = format!("/v1/sandboxes/{sandbox}/events");
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::select! {
            () = buffer.notify.notified() => {}
            () = tokio::time::sleep(AUDIT_FLUSH_INTERVAL) => {}
        }
        while buffer.len() > 0 {
            let Some(token) = jwt.current() else { break };
            let batch = buffer.take(AUDIT_BATCH);
            let body = match serde_json::to_vec(&AuditEvents {
                events: batch.clone(),
            }) {
                Ok(b) => Bytes::from(b),
                Err(_) => continue,
            };
            let sent = match client.request(Method::POST, &path, token.expose(), Some(body)) {
                Ok(req) => client.call::<Value>(req).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(_) => {
                    pushed.inc_by(batch.len() as u64);
                    backoff.reset();
                }
                Err(e) => {
                    buffer.requeue(batch);
                    let delay = backoff.next_delay();
                    tracing::debug!(error = %e, retry_in = ?delay, buffered = buffer.len(),
                        "cannot push audit events to the gateway");
                    tokio::time::sleep(delay).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn bounded_drop_oldest_and_requeue() {
        let b = AuditBuffer::new(3).unwrap();
        for i in 0..5 {
            let mut e = Event::new();
            e.insert("i".into(), Value::from(i));
            b.push(e);
        }
        assert_eq!(b.dropped.get(), 2);
        let batch = b.take(2);
        assert_eq!(batch[0]["i"], 2);
        b.push(Event::new());
        // Room for one of the two: the newer requeued event is kept, the oldest dropped.
        b.requeue(batch);
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped.get(), 3);
        assert_eq!(b.take(1)[0]["i"], 3, "requeued events come first");
    }

    #[test]
    fn layer_captures_only_audit_events() {
        let b = AuditBuffer::new(10).unwrap();
        let subscriber = tracing_subscriber::registry().with(AuditLayer(b.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "audit", event = "egress_denied", port = 443u16, rule = "none", "egress denied");
            tracing::info!(other = 1, "not audit");
        });
        let events = b.take(10);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["event"], "egress_denied");
        assert_eq!(events[0]["port"], 443);
        assert_eq!(events[0]["message"], "egress denied");
    }
}
