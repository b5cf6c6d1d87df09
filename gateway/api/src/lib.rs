//! Wire types of the gateway API that the sidecar and shim share, without the server.
//!
//! Owns: request/response bodies and well-known constants. Must never depend on
//! the gateway server crate or on any I/O.

use serde::{Deserialize, Serialize};

/// Audience of the projected ServiceAccount token the sidecar presents to the gateway.
pub const GATEWAY_AUDIENCE: &str = "palisade-gateway";

/// The JSON body of every error answer (gateway and sidecar 403s alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `policy_denied`.
    pub error: String,
    /// The deciding policy rule, when one decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Human-readable reason.
    pub reason: String,
    /// The host the request was for, when relevant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_round_trips_and_omits_empty_fields() {
        let body = ErrorBody { error: "policy_denied".into(), rule: None, reason: "no rule".into(), host: None };
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(json, r#"{"error":"policy_denied","reason":"no rule"}"#);
        assert_eq!(serde_json::from_str::<ErrorBody>(&json).unwrap(), body);
    }
}
