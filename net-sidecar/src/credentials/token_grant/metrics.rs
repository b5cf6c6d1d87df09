//! Token-grant metrics: exchanges by grant and outcome, their latency, cache look-ups.
//! Labels come from fixed sets only (never endpoints, audiences or scopes).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// Exchange latency buckets (seconds): local token service … slow IdP … timeout.
const GRANT_BUCKETS: &[f64] = &[0.01, 0.05, 0.25, 1.0, 5.0];

/// Values of `palisade_sidecar_token_grant_requests_total{outcome}`.
pub const OUTCOMES: [&str; 11] = [
    "ok",
    "timeout",
    "svid",
    "refused_endpoint",
    "connect",
    "tls",
    "redirect",
    "oauth_error",
    "http_status",
    "bad_response",
    "invalid_token",
];

/// Values of `palisade_sidecar_token_grant_cache_total{result}`.
pub const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "shared"];

/// Handles to the token-grant metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TokenGrantMetrics {
    requests: IntCounterVec,
    seconds: Histogram,
    cache: IntCounterVec,
}

impl TokenGrantMetrics {
    /// Create the metrics and register them in `registry` (the sidecar's `/metrics` one).
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_token_grant_requests_total",
                "Token-grant exchanges (JWT-SVID fetch + token endpoint call), by grant \
                 (client_credentials, token_exchange) and outcome (ok, timeout, svid, \
                 refused_endpoint, connect, tls, redirect, oauth_error, http_status, bad_response, \
                 invalid_token).",
            ),
            &["grant", "outcome"],
        )?;
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                "palisade_sidecar_token_grant_seconds",
                "Duration of token-grant exchanges, successful or not.",
            )
            .buckets(GRANT_BUCKETS.to_vec()),
        )?;
        let cache = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_token_grant_cache_total",
                "Token-grant cache look-ups, by result (hit; miss = this caller started an \
                 exchange; shared = joined an exchange already in flight).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        for grant in ["client_credentials", "token_exchange"] {
            for outcome in OUTCOMES {
                requests.with_label_values(&[grant, outcome]);
            }
        }
        for result in CACHE_RESULTS {
            cache.with_label_values(&[result]);
        }
        Ok(Self {
            requests,
            seconds,
            cache,
        })
    }

    pub(super) fn exchange(&self, grant: &'static str, outcome: &'static str, seconds: f64) {
        self.requests.with_label_values(&[grant, outcome]).inc();
        self.seconds.observe(seconds);
    }

    pub(super) fn cache(&self, result: &'static str) {
        self.cache.with_label_values(&[result]).inc();
    }

    /// Exchanges counted so far with this grant and outcome (tests, diagnostics).
    #[cfg(test)]
    pub fn exchanges(&self, grant: &str, outcome: &str) -> u64 {
        self.requests.with_label_values(&[grant, outcome]).get()
    }

    /// Cache look-ups counted so far with this result.
    #[cfg(test)]
    pub fn cache_count(&self, result: &str) -> u64 {
        self.cache.with_label_values(&[result]).get()
    }
}
