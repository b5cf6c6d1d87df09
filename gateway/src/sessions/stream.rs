//! One sandbox's session stream: `Hello`, then its policy and credentials as
//! they change, heartbeats, and relay requests, as NDJSON on a response body
//! that ends only when the sidecar goes away, the sandbox is deleted, or the
//! gateway shuts down.
//!
//! Only a policy of the sandbox's own namespace or a cluster-wide one is
//! delivered; credentials are re-resolved against the secrets' allowances on
//! every change, and one withheld is logged and audited by name and
//! fingerprint (`credential_withheld`).
//!
//! A stream reads only its [`Sources`] (the store, the metrics it counts in,
//! the policy revision) and the [`SessionHub`] it registers with.
//!
//! Must never: deliver a policy or a credential to another sandbox than the
//! one it was opened for.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use palisade_api::StoredPolicy;
use palisade_api::session::{DeliveredCredential, SessionEvent};
use tokio::sync::{mpsc, watch};

use super::credentials::{self, Resolved};
use super::{Registration, SessionHub};
use crate::http::{BoxError, ResponseBody};
use crate::metrics::Metrics;
use crate::principal::SandboxId;
use crate::store::{Store, StoreError};

/// Lines buffered towards a slow reader.
const BODY_QUEUE: usize = 8;

/// A response body fed line by line from the session task.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// What a session stream reads, besides its hub.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The sandbox record, its policy and the secrets the policy names.
    pub store: Arc<dyn Store>,
    /// Counts events sent and store errors.
    pub metrics: Metrics,
    /// The latest policy revision written; a change means "look again".
    pub policy_revision: watch::Receiver<u64>,
}

/// Start the stream of `sandbox` (already authorized); returns the body.
pub fn open(hub: &SessionHub, sources: Sources, sandbox: SandboxId) -> ResponseBody {
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    let (registration, relays) = hub.register(&sandbox);
    let secret_changes = hub.subscribe_secrets();
    let heartbeat = hub.limits().heartbeat;
    tokio::spawn(run(
        sources,
        sandbox,
        Stream {
            registration,
            relays,
            secret_changes,
            heartbeat,
        },
        tx,
    ));
    http_body_util::BodyExt::boxed_unsync(ChannelBody(rx))
}

/// What a stream got from the hub when it registered.
struct Stream {
    registration: Registration,
    relays: mpsc::Receiver<String>,
    secret_changes: watch::Receiver<u64>,
    heartbeat: Duration,
}

/// What the store says about the sandbox right now.
enum Current {
    /// The sandbox no longer exists.
    Gone,
    /// No policy assigned, or not stored yet.
    NoPolicy,
    Policy(StoredPolicy, Resolved),
}

fn load(store: &dyn Store, sandbox: &SandboxId) -> Result<Current, StoreError> {
    let Some(record) = store.get_sandbox(sandbox)? else {
        return Ok(Current::Gone);
    };
    let Some(name) = record.spec.policy else {
        return Ok(Current::NoPolicy);
    };
    let Some(stored) = store.get_policy(&name)? else {
        return Ok(Current::NoPolicy);
    };
    if !crate::store::policy_usable_by(
        stored.namespace.as_deref(),
        record.spec.namespace.as_deref(),
    ) {
        tracing::warn!(sandbox = %sandbox, policy = %name, policy_namespace = ?stored.namespace,
            sandbox_namespace = ?record.spec.namespace,
            "policy not delivered: it is neither cluster-wide nor of the sandbox's namespace");
        return Ok(Current::NoPolicy);
    }
    let resolved = match palisade_policy::parse_policy(stored.document.as_bytes()) {
        Ok(policy) => credentials::resolve(&policy, stored.namespace.as_deref(), store)?,
        Err(errors) => {
            tracing::error!(policy = %name, errors = errors.0.len(), "stored policy no longer parses; delivering no credentials");
            Resolved::default()
        }
    };
    Ok(Current::Policy(stored, resolved))
}

struct Sender {
    tx: mpsc::Sender<Bytes>,
    metrics: Metrics,
    /// A reader that takes longer than this for one line is gone.
    stall: Duration,
}

impl Sender {
    /// False when the sidecar is gone.
    async fn send(&self, event: &SessionEvent) -> bool {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(_) => return false,
        };
        line.push(b'\n');
        let sent = tokio::time::timeout(self.stall, self.tx.send(Bytes::from(line))).await;
        if matches!(sent, Ok(Ok(()))) {
            self.metrics
                .session_events
                .with_label_values(&[event.kind()])
                .inc();
            true
        } else {
            false
        }
    }
}

async fn run(sources: Sources, sandbox: SandboxId, stream: Stream, tx: mpsc::Sender<Bytes>) {
    let Sources {
        store,
        metrics,
        policy_revision: mut policy_changes,
    } = sources;
    let Stream {
        registration,
        mut relays,
        mut secret_changes,
        heartbeat,
    } = stream;
    let out = Sender {
        tx,
        metrics: metrics.clone(),
        stall: heartbeat * 3,
    };
    tracing::info!(sandbox = %sandbox, session = %registration.id, "session stream opened");
    let hello = SessionEvent::Hello {
        session_id: registration.id.clone(),
        sandbox_id: sandbox.to_string(),
        heartbeat_seconds: heartbeat.as_secs(),
    };
    let mut last_revision: Option<u64> = None;
    let mut last_credentials: Option<Vec<DeliveredCredential>> = None;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reload = true;
    let reason = 'stream: {
        if !out.send(&hello).await {
            break 'stream "sidecar gone";
        }
        loop {
            if reload {
                let (st, id) = (store.clone(), sandbox.clone());
                let current = tokio::task::spawn_blocking(move || load(st.as_ref(), &id)).await;
                match current {
                    Ok(Ok(Current::Gone)) => break 'stream "sandbox deleted",
                    Ok(Ok(Current::NoPolicy)) => {}
                    Ok(Ok(Current::Policy(policy, resolved))) => {
                        let revision = policy.revision;
                        let new_policy = last_revision != Some(revision);
                        if new_policy {
                            let event = SessionEvent::Policy {
                                revision,
                                policy: policy.document,
                            };
                            if !out.send(&event).await {
                                break 'stream "sidecar gone";
                            }
                            last_revision = Some(revision);
                        }
                        if new_policy || last_credentials.as_ref() != Some(&resolved.credentials) {
                            for m in &resolved.missing {
                                tracing::warn!(
                                    sandbox = %sandbox,
                                    credential = %m.credential,
                                    secret = %m.secret,
                                    key = %m.key,
                                    "credential omitted: the secret or key does not exist; \
                                     create it with `palisade secret set`"
                                );
                            }
                            for w in &resolved.withheld {
                                let reasons = w
                                    .reasons
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join("; ");
                                tracing::warn!(
                                    sandbox = %sandbox,
                                    credential = %w.credential,
                                    secret = %w.secret,
                                    key = %w.key,
                                    fingerprint = %w.fingerprint,
                                    reasons = %reasons,
                                    "credential withheld: the secret's allowance does not cover \
                                     this policy or where it would be sent"
                                );
                                tracing::info!(
                                    target: "palisade_audit",
                                    event = "credential_withheld",
                                    sandbox = %sandbox,
                                    policy_revision = revision,
                                    credential = %w.credential,
                                    secret = %w.secret,
                                    key = %w.key,
                                    fingerprint = %w.fingerprint,
                                    reasons = %reasons,
                                    "audit event"
                                );
                            }
                            let event = SessionEvent::Credentials {
                                revision,
                                credentials: resolved.credentials.clone(),
                            };
                            if !out.send(&event).await {
                                break 'stream "sidecar gone";
                            }
                            last_credentials = Some(resolved.credentials);
                        }
                    }
                    Ok(Err(e)) => {
                        metrics.store_errors.inc();
                        tracing::error!(sandbox = %sandbox, error = %e, "session: store read failed; retrying at the next change or heartbeat");
                    }
                    Err(_) => tracing::error!(sandbox = %sandbox, "session: store task panicked"),
                }
            }
            reload = true;
            tokio::select! {
                changed = policy_changes.changed() => {
                    if changed.is_err() { break 'stream "gateway shutting down"; }
                }
                changed = secret_changes.changed() => {
                    if changed.is_err() { break 'stream "gateway shutting down"; }
                }
                _ = ticker.tick() => {
                    let at = crate::fsutil::now();
                    if !out.send(&SessionEvent::Heartbeat { at }).await {
                        break 'stream "sidecar gone";
                    }
                }
                relay = relays.recv() => {
                    reload = false;
                    match relay {
                        Some(relay_id) => {
                            if !out.send(&SessionEvent::Relay { relay_id }).await {
                                break 'stream "sidecar gone";
                            }
                        }
                        None => break 'stream "session ended by the gateway",
                    }
                }
                () = out.tx.closed() => break 'stream "sidecar gone",
            }
        }
    };
    tracing::info!(sandbox = %sandbox, session = %registration.id, reason, "session stream closed");
    drop(registration);
}
