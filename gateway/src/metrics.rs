//! The gateway's Prometheus metrics, served on the admin port.
//!
//! Labels come from bounded sets only: route ids, status classes,
//! authenticator names and refusal reasons — never paths, ids or tokens.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Request latency buckets (seconds): few, spanning fast calls to long-polls.
const LATENCY_BUCKETS: &[f64] = &[0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 35.0];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub tokens_issued: IntCounter,
    pub tokens_refreshed: IntCounter,
    pub key_rotations: IntCounter,
    pub key_age: Gauge,
    pub store_errors: IntCounter,
    pub audit_events: IntCounter,
    pub rate_limited: IntCounterVec,
    pub workload_tokens: IntCounter,
    /// Sidecar session streams open now.
    pub sessions_live: IntGauge,
    /// Session events sent, by event type (hello, policy, ...).
    pub session_events: IntCounterVec,
    /// Exec relay sessions, by outcome (see `sessions::relay`).
    pub exec_sessions: IntCounterVec,
    /// 1 while this replica holds the gateway Lease (`--store kubernetes`).
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "palisade_gateway_requests_total",
                "API requests by route and status class.",
            ),
            &["route", "status_class"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "palisade_gateway_request_duration_seconds",
                "API request latency by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "palisade_gateway_auth_failures_total",
                "Refused credentials by authenticator and reason.",
            ),
            &["authenticator", "reason"],
        )?;
        let tokens_issued = IntCounter::new(
            "palisade_gateway_tokens_issued_total",
            "Sandbox JWTs issued for a bootstrap credential.",
        )?;
        let tokens_refreshed = IntCounter::new(
            "palisade_gateway_tokens_refreshed_total",
            "Sandbox JWTs refreshed.",
        )?;
        let key_rotations = IntCounter::new(
            "palisade_gateway_key_rotations_total",
            "Signing key rotations (manual and automatic).",
        )?;
        let key_age = Gauge::new(
            "palisade_gateway_signing_key_age_seconds",
            "Age of the active signing key.",
        )?;
        let store_errors = IntCounter::new(
            "palisade_gateway_store_errors_total",
            "Store operations that failed.",
        )?;
        let audit_events = IntCounter::new(
            "palisade_gateway_audit_events_total",
            "Audit events received from sandboxes.",
        )?;
        registry.register(Box::new(audit_events.clone()))?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "palisade_gateway_rate_limited_total",
                "Requests refused by the per-principal rate limit, by principal kind.",
            ),
            &["principal_kind"],
        )?;
        registry.register(Box::new(rate_limited.clone()))?;
        let workload_tokens = IntCounter::new(
            "palisade_gateway_workload_tokens_issued_total",
            "Workload tokens minted for upstream audiences.",
        )?;
        registry.register(Box::new(workload_tokens.clone()))?;
        let sessions_live = IntGauge::new(
            "palisade_gateway_sessions_live",
            "Sidecar session streams open now.",
        )?;
        registry.register(Box::new(sessions_live.clone()))?;
        let session_events = IntCounterVec::new(
            Opts::new(
                "palisade_gateway_session_events_sent_total",
                "Events sent on sidecar session streams, by type.",
            ),
            &["type"],
        )?;
        registry.register(Box::new(session_events.clone()))?;
        let exec_sessions = IntCounterVec::new(
            Opts::new(
                "palisade_gateway_exec_sessions_total",
                "Exec relay sessions, by outcome.",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(exec_sessions.clone()))?;
        let leader = IntGauge::new(
            "palisade_gateway_leader",
            "1 while this replica holds the gateway Lease (--store kubernetes), else 0.",
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(tokens_issued.clone()))?;
        registry.register(Box::new(tokens_refreshed.clone()))?;
        registry.register(Box::new(key_rotations.clone()))?;
        registry.register(Box::new(key_age.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            auth_failures,
            tokens_issued,
            tokens_refreshed,
            key_rotations,
            key_age,
            store_errors,
            audit_events,
            rate_limited,
            workload_tokens,
            sessions_live,
            session_events,
            exec_sessions,
            leader,
        })
    }

    pub fn auth_failure(&self, authenticator: &str, reason: &str) {
        self.auth_failures
            .with_label_values(&[authenticator, reason])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}

/// `2xx`, `4xx`, … for a status code.
pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
