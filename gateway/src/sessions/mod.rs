//! Sidecar sessions and exec relays: the per-gateway [`SessionHub`] that
//! knows which sandboxes have a live session stream, hands exec requests to
//! them (`Relay` events) and pairs each exec with the sidecar's dial-back.
//!
//! * [`stream`] — one sandbox's `GET /v1/sandboxes/{id}/session` stream.
//! * [`credentials`] — which secret values a sandbox's policy binds, and where.
//! * [`relay`] — forwarding exec frames between the CLI and the sidecar, with
//!   limits and one audit event per session.
//!
//! Must never: send a credential to any sandbox but the one whose policy
//! names it, log a secret value, or pair a dial-back with another sandbox's exec.

pub mod credentials;
pub mod relay;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::{mpsc, oneshot, watch};

use crate::principal::SandboxId;

/// Exec sessions open at once per sandbox.
pub const DEFAULT_EXEC_MAX_PER_SANDBOX: usize = 4;
/// An exec session with no frame either way for this long is closed.
pub const DEFAULT_EXEC_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// No exec session lives longer than this.
pub const DEFAULT_EXEC_MAX_DURATION: Duration = Duration::from_secs(8 * 60 * 60);
/// Seconds between heartbeats on a session stream.
pub const DEFAULT_HEARTBEAT: Duration =
    Duration::from_secs(palisade_api::session::DEFAULT_HEARTBEAT_SECONDS);
/// How long an exec waits for the sidecar's dial-back.
pub const RELAY_DIAL_BACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Relay requests queued per live session before it counts as stuck.
const RELAY_QUEUE: usize = 16;

/// Limits of sessions and relays (part of [`crate::config::Config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    pub exec_max_per_sandbox: usize,
    pub exec_idle_timeout: Duration,
    pub exec_max_duration: Duration,
    pub heartbeat: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            exec_max_per_sandbox: DEFAULT_EXEC_MAX_PER_SANDBOX,
            exec_idle_timeout: DEFAULT_EXEC_IDLE_TIMEOUT,
            exec_max_duration: DEFAULT_EXEC_MAX_DURATION,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

impl SessionLimits {
    /// Flags/file values over the defaults, validated.
    pub fn resolve(
        max_per_sandbox: Option<usize>,
        idle: Option<Duration>,
        max_duration: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let d = Self::default();
        let limits = Self {
            exec_max_per_sandbox: max_per_sandbox.unwrap_or(d.exec_max_per_sandbox),
            exec_idle_timeout: idle.unwrap_or(d.exec_idle_timeout),
            exec_max_duration: max_duration.unwrap_or(d.exec_max_duration),
            heartbeat: d.heartbeat,
        };
        if limits.exec_max_per_sandbox == 0 {
            anyhow::bail!("--exec-max-per-sandbox must be at least 1");
        }
        if limits.exec_idle_timeout.is_zero() || limits.exec_max_duration.is_zero() {
            anyhow::bail!("--exec-idle-timeout and --exec-max-duration must be at least 1s");
        }
        Ok(limits)
    }
}

/// Why an exec could not get a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRefusal {
    /// The sandbox already has the maximum of exec sessions.
    TooMany,
    /// No live session stream to send the relay request on.
    NotConnected,
}

struct LiveSession {
    id: String,
    /// Dropping this ends the session's stream (sandbox deleted, shutdown).
    relays: mpsc::Sender<String>,
}

struct PendingRelay {
    sandbox: SandboxId,
    dial_back: oneshot::Sender<OnUpgrade>,
}

#[derive(Default)]
struct Inner {
    /// Live session streams per sandbox, oldest first.
    live: HashMap<SandboxId, Vec<LiveSession>>,
    /// Exec sessions admitted per sandbox (waiting for a dial-back or relaying).
    exec: HashMap<SandboxId, usize>,
    /// Relays waiting for the sidecar's dial-back, by relay id.
    pending: HashMap<String, PendingRelay>,
    closed: bool,
}

/// Live sessions per sandbox and the relays waiting to be paired.
pub struct SessionHub {
    limits: SessionLimits,
    inner: Arc<Mutex<Inner>>,
    live_gauge: IntGauge,
    /// Bumped on every secret write; session streams recompute credentials.
    secrets: watch::Sender<u64>,
}

impl std::fmt::Debug for SessionHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHub")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A random identifier for sessions and relays (128 bits, hex).
fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl SessionHub {
    pub fn new(limits: SessionLimits, live_gauge: IntGauge) -> Self {
        Self {
            limits,
            inner: Arc::default(),
            live_gauge,
            secrets: watch::channel(0).0,
        }
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Register a new session stream of `sandbox`. The stream ends when the
    /// returned receiver yields `None`; dropping the registration unregisters.
    pub fn register(&self, sandbox: &SandboxId) -> (Registration, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(RELAY_QUEUE);
        let id = random_id();
        let mut inner = self.inner.lock();
        if !inner.closed {
            inner
                .live
                .entry(sandbox.clone())
                .or_default()
                .push(LiveSession {
                    id: id.clone(),
                    relays: tx,
                });
        }
        self.live_gauge.inc();
        let registration = Registration {
            inner: self.inner.clone(),
            gauge: self.live_gauge.clone(),
            sandbox: sandbox.clone(),
            id,
        };
        (registration, rx)
    }

    /// End every session stream of `sandbox` and drop its waiting relays
    /// (the sandbox was deleted).
    pub fn end_sandbox(&self, sandbox: &SandboxId) {
        let mut inner = self.inner.lock();
        inner.live.remove(sandbox);
        inner.pending.retain(|_, p| &p.sandbox != sandbox);
    }

    /// End every stream and waiting relay; no new ones are kept (shutdown).
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.live.clear();
        inner.pending.clear();
    }

    /// A secret changed: every stream recomputes its credentials.
    pub fn secrets_changed(&self, revision: u64) {
        self.secrets.send_replace(revision);
    }

    pub fn subscribe_secrets(&self) -> watch::Receiver<u64> {
        self.secrets.subscribe()
    }

    /// Admit an exec on `sandbox`: take an exec slot, send `Relay` on its
    /// newest live session, and wait there for the dial-back.
    pub fn open_relay(&self, sandbox: &SandboxId) -> Result<RelayTicket, RelayRefusal> {
        let mut inner = self.inner.lock();
        let open = inner.exec.get(sandbox).copied().unwrap_or(0);
        if open >= self.limits.exec_max_per_sandbox {
            return Err(RelayRefusal::TooMany);
        }
        let relay_id = random_id();
        let sent = inner.live.get(sandbox).is_some_and(|sessions| {
            sessions
                .iter()
                .rev()
                .any(|s| s.relays.try_send(relay_id.clone()).is_ok())
        });
        if !sent {
            return Err(RelayRefusal::NotConnected);
        }
        let (tx, rx) = oneshot::channel();
        inner.pending.insert(
            relay_id.clone(),
            PendingRelay {
                sandbox: sandbox.clone(),
                dial_back: tx,
            },
        );
        *inner.exec.entry(sandbox.clone()).or_default() += 1;
        Ok(RelayTicket {
            relay_id: relay_id.clone(),
            dial_back: rx,
            slot: ExecSlot {
                inner: self.inner.clone(),
                sandbox: sandbox.clone(),
                relay_id,
            },
        })
    }

    /// The waiting exec for a dial-back of `sandbox`; `None` if the relay id is
    /// unknown, expired, or belongs to another sandbox.
    pub fn take_relay(
        &self,
        sandbox: &SandboxId,
        relay_id: &str,
    ) -> Option<oneshot::Sender<OnUpgrade>> {
        let mut inner = self.inner.lock();
        if inner.pending.get(relay_id)?.sandbox != *sandbox {
            return None;
        }
        inner.pending.remove(relay_id).map(|p| p.dial_back)
    }

    /// Exec sessions currently admitted for `sandbox`.
    pub fn exec_open(&self, sandbox: &SandboxId) -> usize {
        self.inner.lock().exec.get(sandbox).copied().unwrap_or(0)
    }
}

/// A live session stream's place in the hub; unregisters on drop.
pub struct Registration {
    inner: Arc<Mutex<Inner>>,
    gauge: IntGauge,
    sandbox: SandboxId,
    pub id: String,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("sandbox", &self.sandbox)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.inner.lock();
        if let Some(sessions) = inner.live.get_mut(&self.sandbox) {
            sessions.retain(|s| s.id != self.id);
            if sessions.is_empty() {
                inner.live.remove(&self.sandbox);
            }
        }
        self.gauge.dec();
    }
}

/// An admitted exec: its relay id, the dial-back to wait for, and its slot.
#[derive(Debug)]
pub struct RelayTicket {
    pub relay_id: String,
    pub dial_back: oneshot::Receiver<OnUpgrade>,
    pub slot: ExecSlot,
}

/// One of a sandbox's exec slots; released (and any waiting relay dropped) on drop.
pub struct ExecSlot {
    inner: Arc<Mutex<Inner>>,
    sandbox: SandboxId,
    relay_id: String,
}

impl std::fmt::Debug for ExecSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSlot")
            .field("sandbox", &self.sandbox)
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        let mut inner = self.inner.lock();
        inner.pending.remove(&self.relay_id);
        if let Some(n) = inner.exec.get_mut(&self.sandbox) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.exec.remove(&self.sandbox);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(max: usize) -> SessionHub {
        let limits = SessionLimits {
            exec_max_per_sandbox: max,
            ..SessionLimits::default()
        };
        SessionHub::new(limits, IntGauge::new("g", "g").unwrap())
    }

    #[test]
    fn relay_needs_a_live_session_and_respects_the_limit() {
        let hub = hub(2);
        let a = SandboxId::generate();
        let b = SandboxId::generate();
        assert_eq!(hub.open_relay(&a).err(), Some(RelayRefusal::NotConnected));
        let (reg, mut relays) = hub.register(&a);
        let t1 = hub.open_relay(&a).unwrap();
        assert_eq!(relays.try_recv().unwrap(), t1.relay_id);
        let t2 = hub.open_relay(&a).unwrap();
        assert_eq!(relays.try_recv().unwrap(), t2.relay_id);
        assert_eq!(hub.open_relay(&a).err(), Some(RelayRefusal::TooMany));
        // Another sandbox cannot take a's relay.
        assert!(hub.take_relay(&b, &t1.relay_id).is_none());
        assert!(hub.take_relay(&a, &t1.relay_id).is_some());
        assert!(hub.take_relay(&a, &t1.relay_id).is_none(), "once only");
        drop(t2);
        assert_eq!(hub.exec_open(&a), 1);
        drop(t1);
        assert_eq!(hub.exec_open(&a), 0);
        // Ending the sandbox ends its stream.
        hub.end_sandbox(&a);
        assert!(relays.try_recv().is_err());
        assert!(relays.blocking_recv().is_none());
        drop(reg);
        assert_eq!(hub.live_gauge.get(), 0);
    }
}
