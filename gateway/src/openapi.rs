//! The OpenAPI 3 description of the API, generated from THE route table
//! ([`crate::routes::ROUTES`]) and the wire types' JSON Schemas, served at
//! `/openapi.json` and checked in as `docs/openapi.json`.

use palisade_api::session::{SecretInfo, SecretList, SecretWrite, SessionEvent};
use palisade_api::{
    AuditEvents, CreatedSandbox, ErrorBody, InvalidPolicyBody, KeyList, Sandbox, SandboxList,
    SandboxSpec, StoredPolicy, TokenResponse, WorkloadTokenRequest, WorkloadTokenResponse,
};
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::routes::{Grant, ROUTES, RouteId};

/// What the table does not say: a summary, the body, the success answer.
struct Op {
    summary: &'static str,
    request: Option<(&'static str, Value)>,
    status: &'static str,
    response: Option<Value>,
}

fn op(id: RouteId, schema: &mut dyn FnMut(&str) -> Value) -> Op {
    let j = "application/json";
    match id {
        RouteId::Jwks => Op {
            summary: "JSON Web Key Set of every key that may still verify",
            request: None,
            status: "200",
            response: Some(json!({"type": "object"})),
        },
        RouteId::OpenIdConfiguration => Op {
            summary: "OpenID provider metadata",
            request: None,
            status: "200",
            response: Some(json!({"type": "object"})),
        },
        RouteId::OpenApi => Op {
            summary: "This document",
            request: None,
            status: "200",
            response: Some(json!({"type": "object"})),
        },
        RouteId::SandboxCreate => Op {
            summary: "Register a sandbox; answers its one-time bootstrap token once; its policy must be cluster-wide or of its namespace (422 policy_not_usable)",
            request: Some((j, schema("SandboxSpec"))),
            status: "201",
            response: Some(schema("CreatedSandbox")),
        },
        RouteId::SandboxList => Op {
            summary: "List sandboxes the caller may see",
            request: None,
            status: "200",
            response: Some(schema("SandboxList")),
        },
        RouteId::SandboxGet => Op {
            summary: "One sandbox",
            request: None,
            status: "200",
            response: Some(schema("Sandbox")),
        },
        RouteId::SandboxDelete => Op {
            summary: "Delete a sandbox; its tokens stop working at once",
            request: None,
            status: "200",
            response: Some(schema("Sandbox")),
        },
        RouteId::SandboxPolicyGet => Op {
            summary: "The sandbox's policy; with revision and wait, a long-poll answering 304 if nothing newer came",
            request: None,
            status: "200",
            response: Some(schema("StoredPolicy")),
        },
        RouteId::SandboxEvents => Op {
            summary: "Audit events from the sandbox's own sidecar",
            request: Some((j, schema("AuditEvents"))),
            status: "202",
            response: Some(json!({"type": "object"})),
        },
        RouteId::SandboxLogs => Op {
            summary: "The local driver's log of the sandbox (sidecar and agent) from byte ?after=N on, as text/plain; next offset in palisade-log-next, palisade-agent-exit once the agent ended",
            request: None,
            status: "200",
            response: None,
        },
        RouteId::WorkloadTokens => Op {
            summary: "A short-lived JWT for one upstream audience named by the sandbox's policy",
            request: Some((j, schema("WorkloadTokenRequest"))),
            status: "200",
            response: Some(schema("WorkloadTokenResponse")),
        },
        RouteId::PolicyPut => Op {
            summary: "Validate and store a policy (YAML or JSON) in ?namespace=NS, or cluster-wide (admin only) without it; its namespace is fixed once created (409 policy_namespace_conflict); 422 invalid_policy (also for file/env credential sources) or secret_not_allowed (a secret it names does not exist or its allowance does not cover this policy and every host/port it binds); If-Match / If-None-Match: * honoured",
            request: Some(("application/yaml", json!({"type": "string"}))),
            status: "200",
            response: Some(schema("StoredPolicy")),
        },
        RouteId::PolicyGet => Op {
            summary: "A stored policy: cluster-wide ones for every reader, namespaced ones only for principals of that namespace (else 404)",
            request: None,
            status: "200",
            response: Some(schema("StoredPolicy")),
        },
        RouteId::TokenIssue => Op {
            summary: "Exchange a bootstrap credential for a sandbox JWT: a one-time bootstrap token (pbt_…), or, with Kubernetes enabled, the pod's projected ServiceAccount token (audience palisade-gateway), then bound to the pod by a pod_uid claim",
            request: None,
            status: "200",
            response: Some(schema("TokenResponse")),
        },
        RouteId::TokenRefresh => Op {
            summary: "A new sandbox JWT (new jti) for a valid one",
            request: None,
            status: "200",
            response: Some(schema("TokenResponse")),
        },
        RouteId::KeysList => Op {
            summary: "Signing and verification keys",
            request: None,
            status: "200",
            response: Some(schema("KeyList")),
        },
        RouteId::KeysRotate => Op {
            summary: "Make a new key the signer now",
            request: None,
            status: "200",
            response: Some(schema("KeyList")),
        },
        RouteId::SandboxSession => Op {
            summary: "The sidecar's session stream: application/x-ndjson, one SessionEvent per line (hello, policy, credentials, heartbeat, relay); never ends by itself",
            request: None,
            status: "200",
            response: None,
        },
        RouteId::SandboxExec => Op {
            summary: "Open an exec session (Connection: upgrade, Upgrade: palisade-exec); 101 then exec frames both ways; 409 sandbox_not_connected, 429 at the session limit",
            request: None,
            status: "101",
            response: None,
        },
        RouteId::RelayDialBack => Op {
            summary: "The sidecar's dial-back for a relay requested on its session (Connection: upgrade, Upgrade: palisade-relay); 101 then raw bytes",
            request: None,
            status: "101",
            response: None,
        },
        RouteId::SecretPut => Op {
            summary: "Create or replace a secret and its allowance (allowedNamespaces, allowedPolicies, allowedHosts; empty: usable by no policy); answers names, key names, the allowance and SHA-256 fingerprints, never values",
            request: Some((j, schema("SecretWrite"))),
            status: "200",
            response: Some(schema("SecretInfo")),
        },
        RouteId::SecretList => Op {
            summary: "Secrets: names, key names and SHA-256 fingerprints, never values",
            request: None,
            status: "200",
            response: Some(schema("SecretList")),
        },
        RouteId::SecretDelete => Op {
            summary: "Delete a secret",
            request: None,
            status: "200",
            response: Some(schema("SecretInfo")),
        },
    }
}

fn grant_name(g: &Grant) -> String {
    match g {
        Grant::Public => "public".into(),
        Grant::Scope(s) => format!("scope:{}", s.as_str()),
        Grant::OwnSandbox => "own-sandbox".into(),
        Grant::SandboxSelf => "sandbox".into(),
        Grant::Bootstrap => "bootstrap-credential".into(),
    }
}

/// The whole document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<ErrorBody>();
    generator.subschema_for::<InvalidPolicyBody>();
    generator.subschema_for::<SandboxSpec>();
    generator.subschema_for::<Sandbox>();
    generator.subschema_for::<CreatedSandbox>();
    generator.subschema_for::<SandboxList>();
    generator.subschema_for::<TokenResponse>();
    generator.subschema_for::<StoredPolicy>();
    generator.subschema_for::<KeyList>();
    generator.subschema_for::<AuditEvents>();
    generator.subschema_for::<WorkloadTokenRequest>();
    generator.subschema_for::<WorkloadTokenResponse>();
    generator.subschema_for::<SessionEvent>();
    generator.subschema_for::<SecretWrite>();
    generator.subschema_for::<SecretInfo>();
    generator.subschema_for::<SecretList>();
    let schemas = generator.take_definitions(true);
    let mut reference = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });

    let mut paths = serde_json::Map::new();
    for route in ROUTES {
        let o = op(route.id, &mut reference);
        let mut responses = serde_json::Map::new();
        let mut ok = json!({ "description": "success" });
        if let Some(schema) = o.response {
            ok["content"] = json!({ "application/json": { "schema": schema } });
        }
        if route.id == RouteId::SandboxSession {
            ok["content"] = json!({ palisade_api::session::SESSION_CONTENT_TYPE: { "schema": reference("SessionEvent") } });
        }
        responses.insert(o.status.to_owned(), ok);
        if route.id == RouteId::SandboxPolicyGet {
            responses.insert(
                "304".into(),
                json!({ "description": "no newer revision within the wait" }),
            );
        }
        if route.id == RouteId::PolicyPut {
            responses.insert(
                "422".into(),
                json!({ "description": "invalid policy", "content": { "application/json": { "schema": reference("InvalidPolicyBody") } } }),
            );
        }
        responses.insert(
            "default".into(),
            json!({ "description": "refusal or error", "content": { "application/json": { "schema": reference("ErrorBody") } } }),
        );
        let mut operation = json!({
            "operationId": route.id.as_str(),
            "summary": o.summary,
            "responses": responses,
            "x-palisade-grants": route.grants.iter().map(grant_name).collect::<Vec<_>>(),
        });
        if route.grants.contains(&Grant::Public) {
            operation["security"] = json!([]);
        }
        let mut params = Vec::new();
        if route.path.contains("{id}") {
            params.push(json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^sbx-[0-9a-f]{32}$" } }));
        }
        if route.path.contains("{name}") {
            params.push(json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" } }));
        }
        if route.id == RouteId::PolicyPut {
            params.push(json!({ "name": "namespace", "in": "query", "required": false, "description": "the namespace the policy belongs to; absent: cluster-wide (admin only)", "schema": { "type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" } }));
        }
        if route.id == RouteId::SandboxPolicyGet {
            params.push(json!({ "name": "revision", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0 } }));
            params.push(json!({ "name": "wait", "in": "query", "required": false, "schema": { "type": "string", "pattern": "^[0-9]+[smhd]?$" } }));
        }
        if let Some(protocol) = match route.id {
            RouteId::SandboxExec => Some(palisade_api::exec::EXEC_UPGRADE_PROTOCOL),
            RouteId::RelayDialBack => Some(palisade_api::session::RELAY_UPGRADE),
            _ => None,
        } {
            params.push(json!({ "name": "Connection", "in": "header", "required": true, "schema": { "type": "string", "enum": ["upgrade"] } }));
            params.push(json!({ "name": "Upgrade", "in": "header", "required": true, "schema": { "type": "string", "enum": [protocol] } }));
        }
        if route.path.contains("{relay_id}") {
            params.push(json!({ "name": "relay_id", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-f]{32}$" } }));
        }
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some((content_type, schema)) = o.request {
            operation["requestBody"] =
                json!({ "required": true, "content": { content_type: { "schema": schema } } });
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Palisade gateway API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Generated from the gateway's route table (gateway/src/routes.rs). See docs/gateway.md.",
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas,
        },
    })
}

/// The document as checked in (pretty JSON, trailing newline).
pub fn render() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}
