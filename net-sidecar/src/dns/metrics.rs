//! DNS metrics. Every label comes from a closed set below — never a query name.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// How a received message ended, one count per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// `dns: policy`, name allowed, upstream answer relayed.
    Allow,
    /// `dns: policy`, name not allowed: REFUSED / NXDOMAIN.
    Deny,
    /// `dns: forward`, upstream answer relayed.
    Forward,
    /// FORMERR / NOTIMP, dropped, or SERVFAIL because no upstream answered.
    Error,
}

impl Outcome {
    const ALL: [Self; 4] = [Self::Allow, Self::Deny, Self::Forward, Self::Error];
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Forward => "forward",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    const ALL: [Self; 2] = [Self::Udp, Self::Tcp];
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// Why a client message was not a query we could act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadKind {
    /// Shorter than a DNS header: dropped.
    Short,
    /// Header fine, body does not parse (truncated, compression loop, bad counts): FORMERR.
    Malformed,
    /// Not exactly one question: FORMERR.
    Questions,
    /// An opcode other than QUERY: NOTIMP.
    Opcode,
    /// The QR bit is set (a response, not a query): dropped, never answered.
    Response,
    /// A query carrying records besides its question (answer, authority, additional
    /// other than one OPT, SIG(0)/TSIG): FORMERR, never forwarded.
    Records,
    /// Bytes after the end of the message: FORMERR, never forwarded.
    Trailing,
}

impl BadKind {
    const ALL: [Self; 7] = [
        Self::Short,
        Self::Malformed,
        Self::Questions,
        Self::Opcode,
        Self::Response,
        Self::Records,
        Self::Trailing,
    ];
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Malformed => "malformed",
            Self::Questions => "questions",
            Self::Opcode => "opcode",
            Self::Response => "response",
            Self::Records => "records",
            Self::Trailing => "trailing",
        }
    }
}

/// Why one upstream attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpstreamFailure {
    Timeout,
    Error,
}

impl UpstreamFailure {
    const ALL: [Self; 2] = [Self::Timeout, Self::Error];
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// The policy DNS server's metrics, registered once at start-up.
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    pub(super) queries: IntCounterVec,
    pub(super) bad_queries: IntCounterVec,
    pub(super) upstream_seconds: Histogram,
    pub(super) upstream_failures: IntCounterVec,
    pub(super) edns_options_stripped: IntCounter,
}

impl DnsMetrics {
    /// Create and register the metrics; every label combination starts at zero so
    /// dashboards and alerts see the series before the first event.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let queries = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_dns_queries_total",
                "DNS messages received by the policy DNS server, by outcome and transport.",
            ),
            &["decision", "transport"],
        )?;
        let bad_queries = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_dns_bad_queries_total",
                "DNS messages that were not a single well-formed query, by kind.",
            ),
            &["kind"],
        )?;
        let upstream_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "palisade_sidecar_dns_upstream_seconds",
                "Time from sending a query to an upstream nameserver to its matching answer.",
            )
            .buckets(vec![0.005, 0.025, 0.1, 0.5, 2.0]),
        )?;
        let upstream_failures = IntCounterVec::new(
            Opts::new(
                "palisade_sidecar_dns_upstream_failures_total",
                "Upstream nameserver attempts that produced no usable answer, by kind.",
            ),
            &["kind"],
        )?;
        let edns_options_stripped = IntCounter::new(
            "palisade_sidecar_dns_edns_options_stripped_total",
            "Queries forwarded without the EDNS options the client put in them (only the \
             question, the UDP payload size and the DO bit are ever forwarded).",
        )?;
        registry.register(Box::new(edns_options_stripped.clone()))?;
        registry.register(Box::new(queries.clone()))?;
        registry.register(Box::new(bad_queries.clone()))?;
        registry.register(Box::new(upstream_seconds.clone()))?;
        registry.register(Box::new(upstream_failures.clone()))?;
        for outcome in Outcome::ALL {
            for transport in Transport::ALL {
                queries.with_label_values(&[outcome.as_str(), transport.as_str()]);
            }
        }
        for kind in BadKind::ALL {
            bad_queries.with_label_values(&[kind.as_str()]);
        }
        for kind in UpstreamFailure::ALL {
            upstream_failures.with_label_values(&[kind.as_str()]);
        }
        Ok(Self {
            queries,
            bad_queries,
            upstream_seconds,
            upstream_failures,
            edns_options_stripped,
        })
    }

    pub(super) fn query(&self, outcome: Outcome, transport: Transport) {
        self.queries
            .with_label_values(&[outcome.as_str(), transport.as_str()])
            .inc();
    }

    pub(super) fn bad(&self, kind: BadKind) {
        self.bad_queries.with_label_values(&[kind.as_str()]).inc();
    }

    pub(super) fn upstream_failure(&self, kind: UpstreamFailure) {
        self.upstream_failures
            .with_label_values(&[kind.as_str()])
            .inc();
    }
}
