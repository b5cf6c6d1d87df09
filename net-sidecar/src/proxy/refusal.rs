//! Refusals as values: every way a connection or request is turned away is one
//! [`Refusal`], and its answer (status and JSON body), its counters and its audit event are
//! all derived from it, in one place ([`Refusal::status`], [`Refusal::body`],
//! [`Refusal::record`]). The request path returns one instead of answering on the spot;
//! the HTTP server answers it ([`super::http`]), CONNECT answers it with the same status
//! and body, and the transparent listener resets the connection after recording it.
//!
//! Owns: the status code, the JSON error body and the counters/audit event of each refusal.
//! Must never: put a secret in a body or an event (a credential appears by name only), or
//! count one refusal twice (what was already counted where it happened is not counted here:
//! see [`Refusal::BadRequest`] and [`Refusal::Upstream`]).

use std::borrow::Cow;

use http::StatusCode;
use palisade_api::ErrorBody;
use palisade_policy::DenyReason;

use super::audit::{Scene, denied_body, error_body, record};
use crate::admin::Metrics;
use crate::admin::metrics::{BadInput, UpstreamError};

/// Why a connection or request may not proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Policy says no (in enforce mode, or a never-dialable address in any mode): 403
    /// `policy_denied`.
    Denied {
        reason: DenyReason,
        rule_label: String,
    },
    /// The name is allowed but the sidecar's resolver has no address for it: 502.
    Unresolvable,
    /// The request cannot be judged, or its framing cannot be trusted: 400 (413 for a form
    /// body too long to check), `bad_request`. Counted as `kind` — `None` when it was
    /// already counted where it was found (the raw head check, [`super::http`]'s `head`).
    BadRequest {
        kind: Option<BadInput>,
        status: StatusCode,
        why: Cow<'static, str>,
        /// Answer with `Connection: close` (what follows on the connection cannot be
        /// trusted).
        close: bool,
    },
    /// Inside inspected TLS: the Host / `:authority` differs from the TLS server name: 421.
    Misdirected,
    /// A gateway-delivered secret is not bound to this endpoint: 403.
    CredentialMismatch {
        credential: String,
        rule: String,
        why: String,
    },
    /// The rule's credential cannot be produced: 502, fail closed.
    CredentialUnavailable {
        credential: String,
        rule: String,
        /// The credential source's kind (a bounded label: `static`, `tokenGrant`, …).
        source: &'static str,
        error: String,
    },
    /// The upstream could not be reached or failed to answer: 502. Counted as `count` —
    /// `None` when the failure was counted where it happened (dialling, the TLS handshake).
    Upstream {
        why: &'static str,
        count: Option<UpstreamError>,
    },
}

/// What the agent is told when its request body broke.
const MALFORMED_BODY: &str = "malformed request body";

impl Refusal {
    /// 400 `malformed request body`, `Connection: close`: the agent's request body broke
    /// (its framing cannot be trusted). Counted as `kind` unless it already was.
    pub fn broken_body(kind: Option<BadInput>) -> Self {
        Refusal::BadRequest {
            kind,
            status: StatusCode::BAD_REQUEST,
            why: MALFORMED_BODY.into(),
            close: true,
        }
    }

    /// A 400 `bad_request`, counted as `kind`.
    pub fn bad_request(kind: BadInput, why: impl Into<Cow<'static, str>>) -> Self {
        Refusal::BadRequest {
            kind: Some(kind),
            status: StatusCode::BAD_REQUEST,
            why: why.into(),
            close: false,
        }
    }

    /// The rule a policy denial names (`none` when no rule matched); `None` for the others.
    pub fn denying_rule(&self) -> Option<&str> {
        match self {
            Refusal::Denied { rule_label, .. } => Some(rule_label),
            _ => None,
        }
    }

    /// The HTTP status of the answer (CONNECT and HTTP requests).
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Denied { .. } | Refusal::CredentialMismatch { .. } => StatusCode::FORBIDDEN,
            Refusal::Unresolvable
            | Refusal::CredentialUnavailable { .. }
            | Refusal::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Refusal::BadRequest { status, .. } => *status,
            Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// Whether the connection closes after the answer.
    pub fn closes(&self) -> bool {
        matches!(self, Refusal::BadRequest { close: true, .. })
    }

    /// The JSON body of the answer; `host` is the request's (validated) host, when known.
    pub fn body(&self, host: Option<&str>) -> ErrorBody {
        match self {
            Refusal::Denied { reason, rule_label } => denied_body(*reason, rule_label, host),
            Refusal::Unresolvable => error_body(
                "upstream_error",
                "the sidecar cannot resolve this host",
                host,
            ),
            Refusal::BadRequest { why, .. } => error_body("bad_request", why, host),
            Refusal::Misdirected => error_body(
                "misdirected_request",
                "the Host / :authority of this request differs from the TLS server name",
                host,
            ),
            Refusal::CredentialMismatch { why, .. } => {
                error_body("credential_endpoint_mismatch", why, host)
            }
            Refusal::CredentialUnavailable {
                credential, error, ..
            } => error_body(
                "credential_unavailable",
                &format!("credential `{credential}` is not available: {error}"),
                host,
            ),
            Refusal::Upstream { why, .. } => error_body("upstream_error", why, host),
        }
    }

    /// Count it and, where it is an event an operator audits, log it (tracing target
    /// `audit`): denials (with the connection and request counters, [`record`]) and
    /// credential refusals.
    pub fn record(&self, metrics: &Metrics, scene: &Scene<'_>) {
        match self {
            Refusal::Denied { reason, rule_label } => {
                record(metrics, &scene.outcome(Err((*reason, rule_label))));
            }
            Refusal::Unresolvable => metrics.upstream_error(UpstreamError::Resolve),
            Refusal::BadRequest { kind, .. } => {
                if let Some(kind) = kind {
                    metrics.bad_input(*kind);
                }
            }
            Refusal::Misdirected => {}
            Refusal::CredentialMismatch {
                credential, rule, ..
            } => {
                tracing::warn!(target: "audit", event = "credential_endpoint_mismatch", credential,
                    rule, policy = scene.policy.name(), client = %scene.info.client,
                    name = scene.name.unwrap_or("-"), port = scene.port,
                    "credential not bound to this endpoint; request refused");
            }
            Refusal::CredentialUnavailable {
                credential,
                rule,
                source,
                error,
            } => {
                metrics
                    .credential_injections
                    .with_label_values(&[credential, "unavailable"])
                    .inc();
                tracing::warn!(
                    target: "audit",
                    event = "credential_unavailable",
                    credential,
                    source,
                    rule,
                    policy = scene.policy.name(),
                    error = %error,
                    client = %scene.info.client,
                    name = scene.name.unwrap_or("-"),
                    "credential unavailable; request refused"
                );
            }
            Refusal::Upstream { count, .. } => {
                if let Some(kind) = count {
                    metrics.upstream_error(*kind);
                }
            }
        }
    }
}
