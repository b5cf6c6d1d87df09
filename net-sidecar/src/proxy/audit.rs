//! Outcomes: one decision, three outputs — the connection/request counters, the denial
//! counter, and the audit event (tracing target `audit`), plus the JSON 403 body.
//!
//! Owns: the audit event's fields (listener, client, original destination, SNI/Host/CONNECT
//! name, port, protocol, decision, reason, rule, policy, mode), what is known of a
//! connection or request when it is recorded ([`Scene`]; [`super::refusal`] records
//! refusals with it) and the [`ErrorBody`] of refusals.
//! Must never: log payload bytes, headers other than the validated host name, or anything
//! secret; put a host name in a metric label.

use std::net::SocketAddr;

use palisade_api::ErrorBody;
use palisade_policy::model::Mode;
use palisade_policy::{CompiledPolicy, DenyReason};

use super::decide::{Plan, Protocol};
use crate::admin::metrics::Metrics;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Transparent,
    Explicit,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Transparent => "transparent",
            Listener::Explicit => "explicit",
        }
    }
}

/// What is known about a connection when it is decided.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub listener: Listener,
    pub client: SocketAddr,
    /// The original destination (transparent listener only).
    pub original_dst: Option<SocketAddr>,
}

/// What a connection or request is, when it is recorded: everything an [`Outcome`] says but
/// the verdict.
#[derive(Debug, Clone, Copy)]
pub struct Scene<'a> {
    pub info: &'a ConnInfo,
    pub protocol: Protocol,
    /// SNI, Host or CONNECT host (already validated), when known.
    pub name: Option<&'a str>,
    pub port: u16,
    pub policy: &'a CompiledPolicy,
    /// Count in `connections_total` (the first decision of a connection).
    pub count_connection: bool,
    /// Count in `http_requests_total` (a plain-HTTP request).
    pub count_request: bool,
}

impl<'a> Scene<'a> {
    /// This scene with `verdict`, for [`record`].
    pub fn outcome(&self, verdict: Result<&'a Plan, (DenyReason, &'a str)>) -> Outcome<'a> {
        Outcome {
            info: self.info,
            protocol: self.protocol,
            name: self.name,
            port: self.port,
            policy: self.policy.name(),
            mode: self.policy.mode(),
            verdict,
            count_connection: self.count_connection,
            count_request: self.count_request,
        }
    }
}

/// One decided connection or request, for [`record`].
#[derive(Debug)]
pub struct Outcome<'a> {
    pub info: &'a ConnInfo,
    pub protocol: Protocol,
    /// SNI, Host or CONNECT host (already validated as a host name or IP literal).
    pub name: Option<&'a str>,
    pub port: u16,
    pub policy: &'a str,
    pub mode: Mode,
    /// `Ok(plan)` = allowed (maybe `audit_deny`), `Err((reason, rule))` = refused.
    pub verdict: Result<&'a Plan, (DenyReason, &'a str)>,
    /// Count in `connections_total` (the first decision of a connection).
    pub count_connection: bool,
    /// Count in `http_requests_total` (a plain-HTTP request).
    pub count_request: bool,
}

/// Count and (for denials and audit denials) audit-log one outcome.
pub fn record(metrics: &Metrics, o: &Outcome<'_>) {
    let (decision, rule, reason) = match o.verdict {
        Ok(plan) => (
            plan.decision_label(),
            plan.rule_label.as_str(),
            plan.audit_deny,
        ),
        Err((reason, rule)) => ("deny", rule, Some(reason)),
    };
    if o.count_connection {
        metrics
            .connections
            .with_label_values(&[decision, o.protocol.as_str(), rule])
            .inc();
    }
    if o.count_request {
        metrics
            .http_requests
            .with_label_values(&[decision, rule])
            .inc();
    }
    let Some(reason) = reason else { return };
    if decision == "deny" {
        metrics.denials.with_label_values(&[reason.as_str()]).inc();
    }
    let mode = match o.mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    };
    let dst = o.info.original_dst.map(|d| d.to_string());
    macro_rules! event {
        ($level:ident, $msg:literal) => {
            tracing::$level!(
                target: "audit",
                event = "egress_denied",
                decision,
                reason = reason.as_str(),
                rule,
                policy = o.policy,
                mode,
                protocol = o.protocol.as_str(),
                listener = o.info.listener.as_str(),
                client = %o.info.client,
                original_dst = dst.as_deref().unwrap_or("-"),
                name = o.name.unwrap_or("-"),
                port = o.port,
                $msg
            )
        };
    }
    if decision == "deny" {
        event!(warn, "egress denied");
    } else {
        event!(info, "egress would be denied (audit mode); let through");
    }
}

/// The JSON body of a policy refusal (HTTP 403 / CONNECT 403).
pub fn denied_body(reason: DenyReason, rule: &str, host: Option<&str>) -> ErrorBody {
    ErrorBody {
        error: "policy_denied".to_owned(),
        rule: (rule != "none").then(|| rule.to_owned()),
        reason: reason.as_str().to_owned(),
        host: host.map(str::to_owned),
    }
}

/// The JSON body of a non-policy error (400, 502).
pub fn error_body(error: &str, reason: &str, host: Option<&str>) -> ErrorBody {
    ErrorBody {
        error: error.to_owned(),
        rule: None,
        reason: reason.to_owned(),
        host: host.map(str::to_owned),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn one_decision_three_outputs() {
        let m = Metrics::new().unwrap();
        let info = ConnInfo {
            listener: Listener::Transparent,
            client: "127.0.0.1:4000".parse().unwrap(),
            original_dst: Some("198.18.0.9:443".parse().unwrap()),
        };
        record(
            &m,
            &Outcome {
                info: &info,
                protocol: Protocol::Tls,
                name: Some("evil.test"),
                port: 443,
                policy: "p",
                mode: Mode::Enforce,
                verdict: Err((DenyReason::NoMatchingRule, "none")),
                count_connection: true,
                count_request: false,
            },
        );
        let plan = Plan {
            rule: None,
            rule_label: "none".into(),
            audit_deny: Some(DenyReason::PortNotAllowed),
            dial: vec!["198.18.0.9:443".parse().unwrap()],
            handling: crate::proxy::decide::Handling::Http,
        };
        record(
            &m,
            &Outcome {
                info: &info,
                protocol: Protocol::Http,
                name: Some("x.test"),
                port: 80,
                policy: "p",
                mode: Mode::Audit,
                verdict: Ok(&plan),
                count_connection: false,
                count_request: true,
            },
        );
        assert_eq!(
            m.connections
                .with_label_values(&["deny", "tls", "none"])
                .get(),
            1
        );
        assert_eq!(m.denials.with_label_values(&["no_matching_rule"]).get(), 1);
        // Audit denials are not enforced denials.
        assert_eq!(m.denials.with_label_values(&["port_not_allowed"]).get(), 0);
        assert_eq!(
            m.http_requests
                .with_label_values(&["audit_deny", "none"])
                .get(),
            1
        );

        let body = serde_json::to_value(denied_body(
            DenyReason::NoMatchingRule,
            "none",
            Some("evil.test"),
        ))
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "policy_denied", "reason": "no_matching_rule", "host": "evil.test"})
        );
        let body =
            serde_json::to_value(denied_body(DenyReason::PortNotAllowed, "github", None)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "policy_denied", "rule": "github", "reason": "port_not_allowed"})
        );
    }
}
