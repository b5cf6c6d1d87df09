//! The one value every outcome is derived from: metrics labels, audit events
//! and the HTTP 403 JSON body all come from a [`Decision`].

use serde::Serialize;

/// Why something was denied. A bounded set: safe as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No egress rule names this host and port.
    NoMatchingRule,
    /// A rule matched the host but not the port.
    PortNotAllowed,
    /// An HTTP `deny` rule matched.
    DeniedByRule,
    /// The rule has HTTP rules and none allowed this request.
    NoMatchingHttpRule,
    /// The connection carried neither TLS nor HTTP and no rule allows opaque TCP.
    OpaqueTcpNotAllowed,
    /// The original destination is not an address the policy host resolves to.
    DestinationMismatch,
    /// The destination address is loopback/link-local/private and not in `allowedCidrs`.
    ForbiddenAddress,
    /// The policy is `denyAll`.
    DenyAll,
}

impl DenyReason {
    /// Stable snake_case name, used as metrics label and in JSON bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoMatchingRule => "no_matching_rule",
            Self::PortNotAllowed => "port_not_allowed",
            Self::DeniedByRule => "denied_by_rule",
            Self::NoMatchingHttpRule => "no_matching_http_rule",
            Self::OpaqueTcpNotAllowed => "opaque_tcp_not_allowed",
            Self::DestinationMismatch => "destination_mismatch",
            Self::ForbiddenAddress => "forbidden_address",
            Self::DenyAll => "deny_all",
        }
    }
}

/// The outcome of matching a connection or a request against a policy.
/// `rule` is the egress rule's name; `detail` names the most specific HTTP
/// sub-rule when one decided (e.g. `deny[0]`, `allow[2]`, `access:read-only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'p> {
    Allow {
        rule: &'p str,
        detail: Option<&'p str>,
    },
    Deny {
        rule: Option<&'p str>,
        detail: Option<&'p str>,
        reason: DenyReason,
    },
}

impl<'p> Decision<'p> {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
    /// The deciding egress rule name, or `"none"` (a bounded metrics label).
    pub fn rule_label(&self) -> &'p str {
        match self {
            Decision::Allow { rule, .. } => rule,
            Decision::Deny { rule, .. } => rule.unwrap_or("none"),
        }
    }
    /// `"allow"` or `"deny"`.
    pub fn label(&self) -> &'static str {
        if self.is_allow() { "allow" } else { "deny" }
    }
}
