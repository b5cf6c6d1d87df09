//! The egress data plane: every agent connection, from accept to splice, inspection or
//! HTTP, and every refusal.
//!
//! One connection, in reading order: [`listener`] admits it under the connection limit and
//! wraps it once (byte counting, idle clock, connection slot); [`transparent`] (15001,
//! redirected by the capture rules) or [`explicit`] (15080, CONNECT and absolute-form HTTP)
//! peeks its first bytes ([`peek`]); [`decide`] turns policy, protocol, anti-spoofing and
//! address checks into one [`decide::Plan`] — dial these addresses, under this rule, with
//! this [`decide::Handling`] (splice, inspect, or HTTP request by request) — or a
//! [`refusal::Refusal`]; the listener then dispatches on the handling: [`splice`], TLS
//! termination ([`inspect`]) or [`http`]. Every refusal is a value that knows its status,
//! body, counters and audit event ([`refusal`], [`audit`]).
//!
//! Module map (one concern each):
//! * [`listener`] — binding, accept loops, the connection limit, the accepted connection.
//! * [`transparent`] — 15001: original destination, peek → decide → dispatch.
//! * [`explicit`] — 15080: CONNECT tunnels and absolute-form HTTP.
//! * [`peek`] — classifying first bytes without consuming them.
//! * [`decide`] — policy + protocol + anti-spoofing + address checks → plan or refusal.
//! * [`resolve`] — the sidecar's own resolver and the original-destination check.
//! * [`http`] — HTTP (plain, and inside inspected TLS) with a decision per request.
//! * [`inspect`] — TLS termination with the sandbox CA for rules that need L7.
//! * [`refusal`] / [`audit`] — refusals as values; counters, audit events and JSON bodies.
//! * [`splice`] / [`io`] / [`upstream`] — byte relay, counted streams, dialling.
//!
//! Must never: run with privileges (ports ≥ 1024 only, no capabilities), dial an
//! unverified destination, or keep running without a valid policy.

pub mod audit;
pub mod decide;
mod explicit;
pub mod http;
mod inspect;
mod io;
pub mod listener;
mod peek;
mod refusal;
pub mod resolve;
mod splice;
mod transparent;
mod upstream;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;

use std::sync::Arc;
use std::time::Duration;

use palisade_policy::CompiledPolicy;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use self::decide::Decider;
use crate::admin::{Metrics, State};

/// The per-connection time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
    pub peek: Duration,
}

/// What every connection handler shares.
#[derive(Debug)]
pub struct Shared {
    /// The current policy generation; each new connection (and HTTP request) reads it.
    pub policy: watch::Receiver<Arc<CompiledPolicy>>,
    pub decider: Decider,
    pub metrics: Metrics,
    pub timeouts: Timeouts,
    pub state: State,
    /// The sandbox CA and the rustls configurations of inspected connections.
    pub tls: Arc<crate::tls::Interceptor>,
    /// Credential sources by name.
    pub credentials: Arc<crate::credentials::Registry>,
    /// `--max-header-bytes` for inspected connections.
    pub max_header_bytes: u32,
    /// Idle upstream connections of inspected traffic.
    pub pool: Arc<http::UpstreamPool>,
}

/// Accept on the transparent and explicit listeners until draining starts, under one
/// connection limit.
pub fn serve(
    shared: &Arc<Shared>,
    limit: &Arc<Semaphore>,
    transparent: Vec<TcpListener>,
    explicit: Vec<TcpListener>,
) {
    for l in transparent {
        accept(shared, limit, l, transparent::handle);
    }
    for l in explicit {
        accept(shared, limit, l, explicit::handle);
    }
}

/// One accept loop on `listener`, each admitted connection handed to `handle`.
fn accept<F, Fut>(shared: &Arc<Shared>, limit: &Arc<Semaphore>, listener: TcpListener, handle: F)
where
    F: Fn(Arc<Shared>, listener::Accepted) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let s = shared.clone();
    tokio::spawn(listener::accept_loop(
        listener,
        shared.state.clone(),
        limit.clone(),
        shared.metrics.clone(),
        move |conn| handle(s.clone(), conn),
    ));
}
