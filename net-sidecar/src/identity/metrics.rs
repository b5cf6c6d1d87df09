//! Metrics of the sidecar's gateway side: identity, session, workload tokens, audit push,
//! relays. Registered in the data plane's registry (one `/metrics`).
//! Must never: label with anything unbounded (ids, hosts, audiences).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Values of `palisade_sidecar_jwt_refreshes_total{outcome}`.
pub const REFRESH_OUTCOMES: [&str; 6] = [
    "issued",
    "refreshed",
    "failed",
    "unauthorized",
    "rebootstrap_impossible",
    "rebootstrapped",
];
/// Values of `palisade_sidecar_gateway_session_state{state}`.
pub const SESSION_STATES: [&str; 3] = ["connecting", "connected", "disconnected"];
/// Values of `palisade_sidecar_gateway_session_events_total{type}`.
pub const EVENT_KINDS: [&str; 5] = ["hello", "policy", "credentials", "heartbeat", "relay"];
/// Values of `palisade_sidecar_workload_tokens_total{outcome}`.
pub const WORKLOAD_OUTCOMES: [&str; 3] = ["fetched", "cached", "failed"];
/// Values of `palisade_sidecar_relays_total{outcome}`.
pub const RELAY_OUTCOMES: [&str; 4] = ["spliced", "shim_unavailable", "dial_failed", "error"];

#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    pub jwt_expiry: IntGauge,
    pub refreshes: IntCounterVec,
    pub session_state: IntGaugeVec,
    pub session_events: IntCounterVec,
    pub session_reconnects: IntCounter,
    pub workload_tokens: IntCounterVec,
    pub audit_pushed: IntCounter,
    pub relays: IntCounterVec,
}

impl IdentityMetrics {
    /// Register everything; `audit_dropped` is the audit buffer's own counter (it exists
    /// before the registry, since logging starts first).
    pub fn register(registry: &Registry, audit_dropped: IntCounter) -> prometheus::Result<Self> {
        let jwt_expiry = IntGauge::new(
            "palisade_sidecar_jwt_expiry_seconds",
            "Unix time (seconds) at which the sidecar's current sandbox JWT expires; 0 = none",
        )?;
        let refreshes = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_jwt_refreshes_total",
                "Sandbox JWT acquisitions by outcome (issued at bootstrap, refreshed, failed, \
                 unauthorized, rebootstrapped, rebootstrap_impossible)",
            ),
            &["outcome"],
        )?;
        let session_state = IntGaugeVec::new(
            Opts::new(
                "palisade_sidecar_gateway_session_state",
                "1 for the gateway session's current state, 0 for the others",
            ),
            &["state"],
        )?;
        let session_events = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_gateway_session_events_total",
                "Events received on the gateway session, by type",
            ),
            &["type"],
        )?;
        let session_reconnects = IntCounter::new(
            "palisade_sidecar_gateway_session_reconnects_total",
            "Gateway session attempts after the first (lost stream, missed heartbeats, errors)",
        )?;
        let workload_tokens = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_workload_tokens_total",
                "Workload token lookups by outcome (fetched from the gateway, cached, failed)",
            ),
            &["outcome"],
        )?;
        let audit_pushed = IntCounter::new(
            "palisade_sidecar_audit_events_pushed_total",
            "Audit events accepted by the gateway",
        )?;
        let relays = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_relays_total",
                "Exec relay dial-backs by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(jwt_expiry.clone()))?;
        registry.register(Box::new(refreshes.clone()))?;
        registry.register(Box::new(session_state.clone()))?;
        registry.register(Box::new(session_events.clone()))?;
        registry.register(Box::new(session_reconnects.clone()))?;
        registry.register(Box::new(workload_tokens.clone()))?;
        registry.register(Box::new(audit_pushed.clone()))?;
        registry.register(Box::new(audit_dropped.clone()))?;
        registry.register(Box::new(relays.clone()))?;
        for o in REFRESH_OUTCOMES {
            refreshes.with_label_values(&[o]);
        }
        for s in SESSION_STATES {
            session_state.with_label_values(&[s]);
        }
        for k in EVENT_KINDS {
            session_events.with_label_values(&[k]);
        }
        for o in WORKLOAD_OUTCOMES {
            workload_tokens.with_label_values(&[o]);
        }
        for o in RELAY_OUTCOMES {
            relays.with_label_values(&[o]);
        }
        Ok(Self {
            jwt_expiry,
            refreshes,
            session_state,
            session_events,
            session_reconnects,
            workload_tokens,
            audit_pushed,
            relays,
        })
    }

    /// Test/standalone handle on a private registry.
    #[cfg(test)]
    pub fn unregistered() -> Self {
        let dropped = IntCounter::new("palisade_sidecar_audit_events_dropped_total", "t")
            .unwrap_or_else(|e| panic!("{e}"));
        Self::register(&Registry::new(), dropped).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn set_session_state(&self, state: &str) {
        for s in SESSION_STATES {
            self.session_state
                .with_label_values(&[s])
                .set(i64::from(s == state));
        }
    }
}
