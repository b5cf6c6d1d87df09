//! The sidecar ↔ gateway session and the secrets API.
//!
//! Owns: the events of `GET /v1/sandboxes/{id}/session` (one JSON
//! [`SessionEvent`] per line, `application/x-ndjson`), the credentials they
//! deliver, and the bodies of `/v1/secrets`. Must never print a secret value:
//! every type that holds one has a hand-written `Debug` that redacts it.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Media type of the session stream.
pub const SESSION_CONTENT_TYPE: &str = "application/x-ndjson";

/// Default seconds between two heartbeats on a session.
pub const DEFAULT_HEARTBEAT_SECONDS: u64 = 15;

/// `Upgrade:` token of `POST /v1/sandboxes/{id}/relays/{relay_id}` (the
/// exec side's is [`crate::exec::EXEC_UPGRADE_PROTOCOL`]).
pub const RELAY_UPGRADE: &str = "palisade-relay";

/// One event of a sandbox's session stream.
///
/// Order at connect: `Hello`, `Policy` (current revision), `Credentials`. Then
/// `Policy` whenever the revision changes, `Credentials` whenever the policy
/// or a referenced secret changes, `Heartbeat` every `heartbeat_seconds`, and
/// `Relay` when an exec wants this sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionEvent {
    Hello {
        session_id: String,
        // A plain string on purpose, not a `SandboxId`: the sidecar compares
        // it with its own id and ends the session on a mismatch, which a
        // malformed id must trigger too (a parse failure would only make the
        // event unreadable, and unreadable events are skipped).
        sandbox_id: String,
        heartbeat_seconds: u64,
    },
    /// The sandbox's policy: `policy` is the YAML (or JSON) document text.
    Policy { revision: u64, policy: String },
    /// The full set of credentials the policy sources from gateway secrets
    /// (replaces any earlier set). `revision` is the policy revision it was
    /// computed for.
    Credentials {
        revision: u64,
        credentials: Vec<DeliveredCredential>,
    },
    /// Unix seconds.
    Heartbeat { at: u64 },
    /// Dial back `POST /v1/sandboxes/{id}/relays/{relay_id}` within 10 s.
    Relay { relay_id: String },
}

impl SessionEvent {
    /// Bounded label for metrics (`hello`, `policy`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            SessionEvent::Hello { .. } => "hello",
            SessionEvent::Policy { .. } => "policy",
            SessionEvent::Credentials { .. } => "credentials",
            SessionEvent::Heartbeat { .. } => "heartbeat",
            SessionEvent::Relay { .. } => "relay",
        }
    }
}

/// A credential resolved by the gateway, keyed by the POLICY's credential name.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveredCredential {
    pub name: String,
    /// The secret value. Never logged: `Debug` redacts it.
    pub value: String,
    /// Where the sidecar may inject it; nowhere else.
    pub bindings: Vec<CredentialBinding>,
}

impl fmt::Debug for DeliveredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveredCredential")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("bindings", &self.bindings)
            .finish()
    }
}

/// One (host, port, paths) a credential may be injected on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CredentialBinding {
    /// The policy's host or host pattern (e.g. `*.example.com`), as written.
    pub host: String,
    pub port: u16,
    /// Path globs of the endpoint's HTTP rules; empty = any path.
    pub paths: Vec<String>,
}

/// `PUT /v1/secrets/{name}` request body: key → value (1 to 64 keys, each
/// name at most 253 bytes) and the secret's allowance — who may use it and
/// where it may be sent. A secret with an empty allowance is usable by no
/// policy (the secure default): the policy must be allowed (by its namespace
/// or by name) AND every host and port its credential is bound to must be
/// allowed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretWrite {
    #[schemars(extend("minProperties" = 1, "maxProperties" = 64))]
    pub data: BTreeMap<String, String>,
    /// Namespaces whose policies may use the secret (each a DNS label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))
    )]
    pub allowed_namespaces: Vec<String>,
    /// Policies that may use the secret: `NAME` for a cluster-wide policy,
    /// `NAMESPACE/NAME` for a policy of that namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(
            pattern = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
        ))
    )]
    pub allowed_policies: Vec<String>,
    /// Where the secret may be sent: `HOST` (any port) or `HOST:PORT`, HOST a
    /// policy host pattern (`api.github.com`, `*.example.com`, an IP literal,
    /// `[2001:db8::1]:443`), matched like policy hosts (`*.` is one label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 260)))]
    pub allowed_hosts: Vec<String>,
}

impl fmt::Debug for SecretWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretWrite")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("allowed_namespaces", &self.allowed_namespaces)
            .field("allowed_policies", &self.allowed_policies)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

/// One key of a stored secret, as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyInfo {
    pub key: String,
    /// `sha256:` + lowercase hex of the value's SHA-256.
    pub fingerprint: String,
}

/// A stored secret's metadata (`PUT` answer and `GET /v1/secrets` entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    pub name: String,
    pub keys: Vec<SecretKeyInfo>,
    /// Namespaces whose policies may use the secret.
    #[serde(default)]
    pub allowed_namespaces: Vec<String>,
    /// Policies that may use it (`NAME` cluster-wide, `NAMESPACE/NAME`).
    #[serde(default)]
    pub allowed_policies: Vec<String>,
    /// Where it may be sent (`HOST` or `HOST:PORT`).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Store revision of the last write.
    pub revision: u64,
    pub updated_at: u64,
}

/// `GET /v1/secrets` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_snake_case() {
        let ev = SessionEvent::Hello {
            session_id: "s".into(),
            sandbox_id: "b".into(),
            heartbeat_seconds: 15,
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"type":"hello","session_id":"s","sandbox_id":"b","heartbeat_seconds":15}"#
        );
        let relay: SessionEvent =
            serde_json::from_str(r#"{"type":"relay","relay_id":"r1"}"#).unwrap();
        assert_eq!(
            relay,
            SessionEvent::Relay {
                relay_id: "r1".into()
            }
        );
        assert_eq!(relay.kind(), "relay");
    }

    #[test]
    fn debug_never_shows_secret_values() {
        let cred = DeliveredCredential {
            name: "gh".into(),
            value: "hunter2-secret".into(),
            bindings: vec![CredentialBinding {
                host: "*.example.com".into(),
                port: 443,
                paths: vec!["/v1/**".into()],
            }],
        };
        let ev = SessionEvent::Credentials {
            revision: 3,
            credentials: vec![cred],
        };
        let dbg = format!("{ev:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("*.example.com"), "{dbg}");
        let write = SecretWrite {
            data: BTreeMap::from([("token".to_string(), "hunter2-secret".to_string())]),
            allowed_namespaces: vec![],
            allowed_policies: vec![],
            allowed_hosts: vec!["api.example.com:443".into()],
        };
        let dbg = format!("{write:?}");
        assert!(!dbg.contains("hunter2") && dbg.contains("token"), "{dbg}");
    }
}
