//! Watches: a chunked stream of newline-delimited `WatchEvent` JSON (ADDED, MODIFIED,
//! DELETED, BOOKMARK, ERROR) for one resource, namespace and selector pair, started from
//! a resourceVersion the way the real server starts it. Owns only the stream; the events
//! come from the store's history and broadcast.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::{Instant, Interval};

use crate::Shared;
use crate::resource::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{EventType, Record, Store};

/// What a watch asks for.
#[derive(Debug)]
pub(crate) struct WatchRequest {
    pub def: Arc<ResourceDef>,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// None for unset or "0": start at now, with a synthetic ADDED for every match.
    pub from: Option<u64>,
    pub bookmarks: bool,
    /// `sendInitialEvents=true` (streaming lists): the current state as ADDED events,
    /// then a BOOKMARK annotated `k8s.io/initial-events-end`.
    pub initial_events: bool,
    pub timeout: Option<Duration>,
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn event(kind: &str, object: Value) -> Bytes {
    line(&json!({ "type": kind, "object": object }))
}

/// The state of one open watch.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    req: WatchRequest,
    queue: VecDeque<Bytes>,
    rx: Option<broadcast::Receiver<Arc<Record>>>,
    last_rv: u64,
    bookmark: Interval,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("req", &self.req).finish()
    }
}

impl Watch {
    /// Open a watch: the initial events are decided here, under the store lock, with the
    /// subscription taken in the same critical section so no change falls in between.
    pub(crate) fn open(shared: Arc<Shared>, req: WatchRequest) -> Watch {
        let mut queue = VecDeque::new();
        let (rx, last_rv) = {
            let store = shared.store.lock();
            let current = store.current_rv();
            match req.from {
                _ if req.initial_events => {
                    let ns = req.namespace.as_deref();
                    for (_, obj) in store.list(&req.def, ns, &req.labels, &req.fields) {
                        queue.push_back(event("ADDED", obj));
                    }
                    queue.push_back(event(
                        "BOOKMARK",
                        json!({
                            "kind": req.def.kind,
                            "apiVersion": req.def.api_version(),
                            "metadata": {
                                "resourceVersion": current.to_string(),
                                "annotations": { "k8s.io/initial-events-end": "true" },
                            },
                        }),
                    ));
                    (Some(store.subscribe()), current)
                }
                Some(rv) if rv < store.compacted() => {
                    let e = ApiError::expired(rv, store.compacted());
                    queue.push_back(event("ERROR", e.body()));
                    (None, current)
                }
                Some(rv) => {
                    for r in store.since(rv) {
                        if let Some(b) = translate(&req, &r) {
                            queue.push_back(b);
                        }
                    }
                    (Some(store.subscribe()), current.max(rv))
                }
                None => {
                    let ns = req.namespace.as_deref();
                    for (_, obj) in store.list(&req.def, ns, &req.labels, &req.fields) {
                        queue.push_back(event("ADDED", obj));
                    }
                    (Some(store.subscribe()), current)
                }
            }
        };
        let period = shared.config.bookmark_interval;
        let mut bookmark = tokio::time::interval_at(Instant::now() + period, period);
        bookmark.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = req.timeout.map(|t| Instant::now() + t);
        Watch {
            shared,
            req,
            queue,
            rx,
            last_rv,
            bookmark,
            deadline,
        }
    }

    /// The next chunk, or None when the watch ends (timeout, or after an ERROR).
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Some(b);
            }
            let rx = self.rx.as_mut()?;
            let deadline = self.deadline;
            let timeout = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(r) => {
                        if r.rv > self.last_rv {
                            self.last_rv = r.rv;
                            if let Some(b) = translate(&self.req, &r) {
                                return Some(b);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let oldest = self.shared.store.lock().compacted().max(self.last_rv + 1);
                        self.rx = None;
                        return Some(event("ERROR", ApiError::expired(self.last_rv, oldest).body()));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.bookmark.tick(), if self.req.bookmarks => {
                    // Only when every change up to now has been seen: the store lock is held
                    // while changes are published, so an empty receiver here means caught up.
                    let rv = {
                        let store = self.shared.store.lock();
                        rx.is_empty().then(|| store.current_rv())
                    };
                    if let Some(rv) = rv {
                        self.last_rv = self.last_rv.max(rv);
                        return Some(event("BOOKMARK", json!({
                            "kind": self.req.def.kind,
                            "apiVersion": self.req.def.api_version(),
                            "metadata": { "resourceVersion": self.last_rv.to_string() },
                        })));
                    }
                }
                _ = timeout => return None,
            }
        }
    }
}

/// A stored change as this watch sees it: filtered by resource, namespace and selectors,
/// with selector transitions turned into ADDED / DELETED as the real server does.
fn translate(req: &WatchRequest, r: &Record) -> Option<Bytes> {
    if r.storage != req.def.storage_id()
        || req.namespace.as_deref().is_some_and(|ns| ns != r.namespace)
    {
        return None;
    }
    let matches = |o: &Value| req.labels.matches(o) && req.fields.matches(o);
    let now = matches(&r.object);
    let kind = match (r.kind, r.previous.as_ref().map(matches)) {
        (EventType::Modified, Some(false)) if now => EventType::Added,
        (EventType::Modified, Some(true)) if !now => EventType::Deleted,
        (_, _) if !now => return None,
        (k, _) => k,
    };
    Some(event(
        kind.as_str(),
        Store::present(&req.def, r.object.clone()),
    ))
}
