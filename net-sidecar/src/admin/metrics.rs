//! The data plane's Prometheus metrics, all in one registry that `/metrics` renders.
//!
//! Owns: metric names, help texts, label sets and histogram buckets; the process collector;
//! pre-created series for every bounded label value so dashboards see zeros, not gaps.
//! Must never: take a label value from the network (hosts, paths, SNI); labels are decision,
//! protocol, reason, direction, bad-input kind, and policy rule names (bounded by the policy,
//! `none` when no rule decided).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use palisade_policy::DenyReason;

/// Every [`DenyReason`], so each `denials_total{reason}` series exists from the start.
pub const ALL_DENY_REASONS: [DenyReason; 8] = [
    DenyReason::NoMatchingRule,
    DenyReason::PortNotAllowed,
    DenyReason::DeniedByRule,
    DenyReason::NoMatchingHttpRule,
    DenyReason::OpaqueTcpNotAllowed,
    DenyReason::DestinationMismatch,
    DenyReason::ForbiddenAddress,
    DenyReason::DenyAll,
];

/// Upstream connect latency buckets (seconds): few, spanning LAN to slow WAN to timeout.
const CONNECT_BUCKETS: &[f64] = &[0.005, 0.025, 0.1, 0.5, 2.5];

/// Handles to every data-plane metric. Cheap to clone (all handles are `Arc`s inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub denials: IntCounterVec,
    pub bytes_up: IntCounter,
    pub bytes_down: IntCounter,
    pub active_connections: IntGauge,
    pub policy_generation: IntGauge,
    pub policy_reload_failures: IntCounter,
    pub upstream_connect_seconds: Histogram,
    pub upstream_errors: IntCounterVec,
    pub bad_input: IntCounterVec,
    pub connection_limit_rejections: IntCounter,
    pub tls_handshake_failures: IntCounterVec,
    pub leaf_cache: IntCounterVec,
    pub credential_injections: IntCounterVec,
    pub http_request_seconds: Histogram,
    pub http_responses: IntCounterVec,
}

/// Values of `palisade_sidecar_tls_handshake_failures_total{side}`.
pub const TLS_SIDES: [&str; 2] = ["agent", "upstream"];
/// Values of `palisade_sidecar_tls_handshake_failures_total{reason}`.
pub const TLS_FAILURE_REASONS: [&str; 3] = ["timeout", "handshake", "certificate"];
/// Request latency through the inspecting/HTTP path (seconds), few buckets.
const REQUEST_BUCKETS: &[f64] = &[0.005, 0.025, 0.1, 0.5, 2.5];

/// `read` (GET, HEAD, OPTIONS), `write` (POST, PUT, PATCH, DELETE) or `other`.
pub fn method_class(m: &http::Method) -> &'static str {
    match m.as_str() {
        "GET" | "HEAD" | "OPTIONS" => "read",
        "POST" | "PUT" | "PATCH" | "DELETE" => "write",
        _ => "other",
    }
}

/// `2xx`, `4xx`, … for a status code.
pub fn status_class(s: http::StatusCode) -> &'static str {
    match s.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Values of `palisade_sidecar_bad_input_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadInput {
    /// First byte said TLS handshake, but the records or the ClientHello did not parse.
    MalformedClientHello,
    /// A ClientHello larger than the peek buffer.
    ClientHelloTooLarge,
    /// A request line that looked like HTTP/1, followed by something that is not HTTP.
    MalformedHttp,
    /// An HTTP request head larger than the limit (answered 431).
    HeaderTooLarge,
    /// The client did not complete its ClientHello / request head in time (slowloris).
    PeekTimeout,
    /// Bytes that are not an HTTP request at all, sent to the explicit proxy.
    Garbage,
    /// A connection to the transparent port that the capture rules did not redirect.
    NotRedirected,
    /// HTTP/1 request with both Content-Length and Transfer-Encoding (answered 400).
    ClAndTe,
    /// HTTP/1 request with more than one Content-Length (answered 400).
    DuplicateContentLength,
    /// HTTP/1 request whose Transfer-Encoding is not exactly `chunked` (answered 400).
    BadTransferEncoding,
    /// HTTP/1 request head with a line feed not preceded by a carriage return (answered 400).
    BareLf,
    /// HTTP/1 request head with an obsolete folded header line (answered 400).
    ObsFold,
    /// Request with more than one Host header (answered 400).
    MultipleHost,
    /// A request body whose framing broke or that ended early (answered 400 before anything
    /// went upstream, or the upstream connection aborted if it broke later).
    MalformedBody,
    /// A path the HTTP rules cannot judge unambiguously: `;` path parameters, encoded `/`
    /// or `\`, empty segments (answered 400).
    AmbiguousPath,
    /// A method override (header or `_method`) that is not a method token (answered 400).
    BadMethodOverride,
    /// A urlencoded form body too long to check for `_method` (answered 413).
    FormTooLarge,
}

impl BadInput {
    pub const ALL: [BadInput; 17] = [
        BadInput::MalformedClientHello,
        BadInput::ClientHelloTooLarge,
        BadInput::MalformedHttp,
        BadInput::HeaderTooLarge,
        BadInput::PeekTimeout,
        BadInput::Garbage,
        BadInput::NotRedirected,
        BadInput::ClAndTe,
        BadInput::DuplicateContentLength,
        BadInput::BadTransferEncoding,
        BadInput::BareLf,
        BadInput::ObsFold,
        BadInput::MultipleHost,
        BadInput::MalformedBody,
        BadInput::AmbiguousPath,
        BadInput::BadMethodOverride,
        BadInput::FormTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BadInput::MalformedClientHello => "malformed_client_hello",
            BadInput::ClientHelloTooLarge => "client_hello_too_large",
            BadInput::MalformedHttp => "malformed_http",
            BadInput::HeaderTooLarge => "header_too_large",
            BadInput::PeekTimeout => "peek_timeout",
            BadInput::Garbage => "garbage",
            BadInput::NotRedirected => "not_redirected",
            BadInput::ClAndTe => "cl_and_te",
            BadInput::DuplicateContentLength => "duplicate_content_length",
            BadInput::BadTransferEncoding => "bad_transfer_encoding",
            BadInput::BareLf => "bare_lf",
            BadInput::ObsFold => "obs_fold",
            BadInput::MultipleHost => "multiple_host",
            BadInput::MalformedBody => "malformed_body",
            BadInput::AmbiguousPath => "ambiguous_path",
            BadInput::BadMethodOverride => "bad_method_override",
            BadInput::FormTooLarge => "form_too_large",
        }
    }
}

/// Values of `palisade_sidecar_upstream_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The sidecar's resolver had no address for an allowed name.
    Resolve,
    /// TCP connect failed (refused, unreachable).
    Connect,
    /// TCP connect did not finish within --connect-timeout.
    ConnectTimeout,
    /// The upstream broke an HTTP exchange.
    Http,
    /// TLS towards the upstream of an inspected connection failed (verification, handshake).
    Tls,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 5] = [
        UpstreamError::Resolve,
        UpstreamError::Connect,
        UpstreamError::ConnectTimeout,
        UpstreamError::Http,
        UpstreamError::Tls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Resolve => "resolve",
            UpstreamError::Connect => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::Http => "http",
            UpstreamError::Tls => "tls",
        }
    }
}

impl Metrics {
    /// A fresh registry with the process collector and every data-plane metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        let connections = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_connections_total",
                "Agent connections decided, by decision (allow, deny, audit_deny), protocol (tls, http, tcp) \
                 and deciding policy rule (none when no rule matched). A plain-HTTP connection is labelled \
                 with the decision on its first request.",
            ),
            &["decision", "protocol", "rule"],
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_http_requests_total",
                "Plain-HTTP requests decided (each request on a keep-alive connection is checked), by \
                 decision and rule.",
            ),
            &["decision", "rule"],
        )?;
        let denials = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_denials_total",
                "Connections and HTTP requests refused by policy (enforce mode), by reason.",
            ),
            &["reason"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_bytes_total",
                "Bytes relayed for the agent: up = agent to upstream, down = upstream to agent.",
            ),
            &["direction"],
        )?;
        let active_connections = IntGauge::new(
            "palisade_sidecar_active_connections",
            "Agent connections currently open (transparent and explicit).",
        )?;
        let policy_generation = IntGauge::new(
            "palisade_sidecar_policy_generation",
            "Generation of the policy in force: 1 after start-up, +1 per successful reload.",
        )?;
        let policy_reload_failures = IntCounter::new(
            "palisade_sidecar_policy_reload_failures_total",
            "Policy file changes that were refused (unreadable or invalid); the last good policy stays.",
        )?;
        let upstream_connect_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "palisade_sidecar_upstream_connect_seconds",
                "Time to establish upstream TCP connections (successful ones).",
            )
            .buckets(CONNECT_BUCKETS.to_vec()),
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_upstream_errors_total",
                "Allowed connections that could not be served because of the upstream, by kind \
                 (resolve, connect, connect_timeout, http).",
            ),
            &["kind"],
        )?;
        let bad_input = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_bad_input_total",
                "Connections closed because the client sent something unusable, by kind.",
            ),
            &["kind"],
        )?;
        let connection_limit_rejections = IntCounter::new(
            "palisade_sidecar_connection_limit_rejections_total",
            "Agent connections reset because --max-connections were already open.",
        )?;

        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_tls_handshake_failures_total",
                "TLS handshakes of inspected connections that failed, by side (agent: the agent \
                 refused our leaf or spoke bad TLS; upstream: the real server did not verify or \
                 answer) and reason (timeout, handshake, certificate).",
            ),
            &["side", "reason"],
        )?;
        let leaf_cache = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_leaf_cache_total",
                "Leaf certificate look-ups for inspected connections, by result (hit, miss = minted).",
            ),
            &["result"],
        )?;
        let credential_injections = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_credential_injections_total",
                "Credential uses on inspected requests, by credential name (from the policy) and \
                 outcome (injected, unavailable = request refused with 502).",
            ),
            &["credential", "outcome"],
        )?;
        let http_request_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "palisade_sidecar_http_request_seconds",
                "Time from an allowed HTTP request (plain or inspected) to the upstream's response head.",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
        )?;
        let http_responses = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_http_responses_total",
                "Answers to HTTP requests (plain and inspected, including the sidecar's own 4xx/5xx), \
                 by rule, method_class (read, write, other) and status_class (1xx..5xx).",
            ),
            &["rule", "method_class", "status_class"],
        )?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        registry.register(Box::new(leaf_cache.clone()))?;
        registry.register(Box::new(credential_injections.clone()))?;
        registry.register(Box::new(http_request_seconds.clone()))?;
        registry.register(Box::new(http_responses.clone()))?;
        for side in TLS_SIDES {
            for reason in TLS_FAILURE_REASONS {
                tls_handshake_failures.with_label_values(&[side, reason]);
            }
        }
        for result in ["hit", "miss"] {
            leaf_cache.with_label_values(&[result]);
        }

        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(denials.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(active_connections.clone()))?;
        registry.register(Box::new(policy_generation.clone()))?;
        registry.register(Box::new(policy_reload_failures.clone()))?;
        registry.register(Box::new(upstream_connect_seconds.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(bad_input.clone()))?;
        registry.register(Box::new(connection_limit_rejections.clone()))?;

        for reason in ALL_DENY_REASONS {
            denials.with_label_values(&[reason.as_str()]);
        }
        for kind in BadInput::ALL {
            bad_input.with_label_values(&[kind.as_str()]);
        }
        for kind in UpstreamError::ALL {
            upstream_errors.with_label_values(&[kind.as_str()]);
        }

        Ok(Self {
            registry,
            connections,
            http_requests,
            denials,
            bytes_up: bytes.with_label_values(&["up"]),
            bytes_down: bytes.with_label_values(&["down"]),
            active_connections,
            policy_generation,
            policy_reload_failures,
            upstream_connect_seconds,
            upstream_errors,
            bad_input,
            connection_limit_rejections,
            tls_handshake_failures,
            leaf_cache,
            credential_injections,
            http_request_seconds,
            http_responses,
        })
    }

    pub fn tls_failure(&self, side: &str, reason: &str) {
        self.tls_handshake_failures
            .with_label_values(&[side, reason])
            .inc();
    }

    /// The registry, for other components (the DNS server) to register their metrics in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn bad_input(&self, kind: BadInput) {
        self.bad_input.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on inconsistent metric families, which our fixed
        // registrations cannot produce; an empty answer is better than a panic.
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::new().unwrap();
        m.connections
            .with_label_values(&["allow", "tls", "github"])
            .inc();
        m.bytes_up.inc_by(10);
        m.upstream_connect_seconds.observe(0.01);
        m.bad_input(BadInput::PeekTimeout);
        let text = String::from_utf8(m.render()).unwrap();
        for (name, kind) in [
            ("palisade_sidecar_connections_total", "counter"),
            ("palisade_sidecar_http_requests_total", "counter"),
            ("palisade_sidecar_denials_total", "counter"),
            ("palisade_sidecar_bytes_total", "counter"),
            ("palisade_sidecar_active_connections", "gauge"),
            ("palisade_sidecar_policy_generation", "gauge"),
            ("palisade_sidecar_policy_reload_failures_total", "counter"),
            ("palisade_sidecar_upstream_connect_seconds", "histogram"),
            ("palisade_sidecar_upstream_errors_total", "counter"),
            ("palisade_sidecar_bad_input_total", "counter"),
            (
                "palisade_sidecar_connection_limit_rejections_total",
                "counter",
            ),
        ] {
            // http_requests_total has no series until a request is counted; the others do.
            if name != "palisade_sidecar_http_requests_total" {
                assert!(
                    text.contains(&format!("# TYPE {name} {kind}\n")),
                    "{name} missing:\n{text}"
                );
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no help"
                );
            }
        }
        assert!(text.contains(
            r#"palisade_sidecar_connections_total{decision="allow",protocol="tls",rule="github"} 1"#
        ));
        assert!(text.contains(r#"palisade_sidecar_bytes_total{direction="up"} 10"#));
        assert!(text.contains(r#"palisade_sidecar_bad_input_total{kind="peek_timeout"} 1"#));
        assert!(
            text.contains(r#"palisade_sidecar_denials_total{reason="destination_mismatch"} 0"#)
        );
        assert!(text.contains(r#"palisade_sidecar_upstream_connect_seconds_bucket{le="0.025"} 1"#));
        assert!(
            text.contains("process_open_fds"),
            "process collector missing"
        );
    }
}
