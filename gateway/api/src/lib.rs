//! Wire types of the gateway API that the sidecar and shim share, without the server.
//!
//! Owns: request/response bodies, the [`SandboxId`] they carry, and the
//! well-known constants and [`defaults`] every program must agree on. Must
//! never depend on the gateway server crate or on any I/O.

pub mod defaults;
pub mod exec;
mod sandbox_id;
pub mod session;

pub use sandbox_id::SandboxId;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Audience of the projected ServiceAccount token the sidecar presents to the gateway.
pub const GATEWAY_AUDIENCE: &str = "palisade-gateway";

/// Audience (`aud`) of the sandbox JWTs the gateway mints: they are presented
/// back to the gateway only.
pub const SANDBOX_TOKEN_AUDIENCE: &str = "palisade-gateway";

/// JOSE `typ` header of a sandbox JWT.
pub const SANDBOX_TOKEN_TYP: &str = "palisade-sandbox+jwt";

/// JOSE `typ` header of a workload token (a JWT for an upstream audience).
pub const WORKLOAD_TOKEN_TYP: &str = "palisade-workload+jwt";

/// Prefix of one-time bootstrap tokens, so they are recognisable in a
/// credential scanner and never confused with a JWT.
pub const BOOTSTRAP_TOKEN_PREFIX: &str = "pbt_";

/// The JSON body of every error answer (gateway and sidecar 403s alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

/// An [`ErrorBody`] for a rejected policy document, with one entry per problem.
/// It deserialises as a plain [`ErrorBody`] too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvalidPolicyBody {
    #[serde(flatten)]
    pub error: ErrorBody,
    pub errors: Vec<FieldError>,
}

/// One problem in a policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    /// Field path like `spec.egress[0].hosts[1]`, or `(document)`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub message: String,
}

/// `POST /v1/sandboxes` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// DNS-label-like display name.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Name of the policy (see `PUT /v1/policies/{name}`) this sandbox runs
    /// under: a policy of the sandbox's own namespace or a cluster-wide one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub policy: Option<String>,
    /// At most 64 labels; keys 1-63 characters (OpenAPI 3.0 cannot state
    /// key lengths), values at most 253.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "additionalProperties" = { "type": "string", "maxLength": 253 }
    ))]
    pub labels: BTreeMap<String, String>,
    /// The agent's command and arguments (run by the local driver under
    /// `palisade-shim`; default `sleep infinity`). At most 256 arguments and
    /// 64 KiB in total, no NUL; the program name (first) must not be empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(regex(pattern = r"^[^\u0000]*$")))]
    pub command: Vec<String>,
}

/// A registered sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    pub id: SandboxId,
    #[serde(flatten)]
    pub spec: SandboxSpec,
    /// Subject of the principal that created it.
    pub owner: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// `POST /v1/sandboxes` answer: the record and its one-time bootstrap token,
/// shown exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedSandbox {
    pub sandbox: Sandbox,
    pub bootstrap_token: String,
    pub bootstrap_expires_at: u64,
}

/// `GET /v1/sandboxes` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<Sandbox>,
}

/// `POST /v1/token:issue` and `POST /v1/token:refresh` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub token: String,
    pub token_type: String,
    pub sandbox_id: SandboxId,
    pub expires_at: u64,
    pub kid: String,
}

/// `POST /v1/sandboxes/{id}/workload-tokens` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadTokenRequest {
    /// Exactly one `workloadToken` audience named in the sandbox's policy.
    pub audience: String,
}

/// `POST /v1/sandboxes/{id}/workload-tokens` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTokenResponse {
    pub token: String,
    pub audience: String,
    pub expires_at: u64,
    pub kid: String,
}

/// A stored policy (`GET /v1/policies/{name}`, `GET /v1/sandboxes/{id}/policy`).
/// The `ETag` header carries `etag` too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredPolicy {
    pub name: String,
    /// The namespace the policy belongs to; absent for a cluster-wide policy
    /// (written only by admins, usable by sandboxes of every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
    /// Store-wide, strictly increasing with every write.
    pub revision: u64,
    pub etag: String,
    /// The document as submitted (YAML or JSON).
    pub document: String,
    pub updated_at: u64,
}

/// `POST /v1/sandboxes/{id}/events`: audit events from a sandbox's sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEvents {
    /// Each a JSON object (the sidecar's audit record).
    pub events: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// One signing/verification key (`GET /v1/keys`, `POST /v1/keys:rotate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub kid: String,
    pub active: bool,
    pub created_at: u64,
    /// When it stopped signing (absent for the active key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
    /// When it stops verifying (absent for the active key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_until: Option<u64>,
}

/// `GET /v1/keys` and `POST /v1/keys:rotate` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_round_trips_and_omits_empty_fields() {
        let body = ErrorBody {
            error: "policy_denied".into(),
            rule: None,
            reason: "no rule".into(),
            host: None,
        };
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(json, r#"{"error":"policy_denied","reason":"no rule"}"#);
        assert_eq!(serde_json::from_str::<ErrorBody>(&json).unwrap(), body);
    }

    #[test]
    fn invalid_policy_body_is_also_an_error_body() {
        let body = InvalidPolicyBody {
            error: ErrorBody {
                error: "invalid_policy".into(),
                rule: None,
                reason: "1 error".into(),
                host: None,
            },
            errors: vec![FieldError {
                path: "spec.egress[0]".into(),
                line: Some(3),
                column: None,
                message: "bad".into(),
            }],
        };
        let json = serde_json::to_string(&body).unwrap();
        let plain: ErrorBody = serde_json::from_str(&json).unwrap();
        assert_eq!(plain.error, "invalid_policy");
        assert_eq!(
            serde_json::from_str::<InvalidPolicyBody>(&json).unwrap(),
            body
        );
    }

    #[test]
    fn sandbox_spec_rejects_unknown_fields() {
        let err = serde_json::from_str::<SandboxSpec>(r#"{"name":"a","nmae":"b"}"#).unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
    }
}
