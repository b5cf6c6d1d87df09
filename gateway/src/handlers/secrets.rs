//! Secrets in the gateway store: `PUT /v1/secrets/{name}`, `GET /v1/secrets`,
//! `DELETE /v1/secrets/{name}` (admin). Values go into the store and, through
//! sessions, to the sidecars whose policies name them and that the secret's
//! allowance admits — nowhere else: answers and logs carry names, key names,
//! allowances and SHA-256 fingerprints only. No route answers a value.

use std::collections::BTreeMap;

use http::StatusCode;
use palisade_api::session::{SecretList, SecretWrite};

use super::ctx::{Ctx, HandlerResult};
use crate::http::{ApiError, Request, json, read_body};
use crate::sessions::credentials::Allowance;
use crate::store::SecretAllowance;

/// Keys per secret.
const MAX_KEYS: usize = 64;

/// Secret names are DNS labels, like policy names (the documented `{name}`).
fn valid_name(s: &str) -> bool {
    crate::principal::valid_label(s)
}

fn name_param(ctx: &Ctx) -> Result<String, ApiError> {
    ctx.matched
        .params
        .name
        .clone()
        .filter(|n| valid_name(n))
        .ok_or_else(|| ApiError::not_found("secret not found"))
}

/// Parse the body without ever quoting it back (it holds values).
fn parse_write(bytes: &[u8]) -> Result<(BTreeMap<String, String>, SecretAllowance), ApiError> {
    let write: SecretWrite = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "the body must be {{\"data\": {{\"KEY\": \"VALUE\", ...}}, \"allowedNamespaces\": [...], \
                 \"allowedPolicies\": [...], \"allowedHosts\": [...]}} (error at line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if write.data.is_empty() || write.data.len() > MAX_KEYS {
        return Err(ApiError::bad_request(
            "invalid_secret",
            format!("a secret holds 1 to {MAX_KEYS} keys"),
        ));
    }
    let allowance = SecretAllowance {
        namespaces: write.allowed_namespaces,
        policies: write.allowed_policies,
        hosts: write.allowed_hosts,
    };
    // The allowance names namespaces, policies and hosts, never values.
    Allowance::parse(&allowance).map_err(|e| ApiError::bad_request("invalid_secret", e))?;
    // Key names are free-form (the schema's); they are logged escaped (`?`).
    Ok((write.data, allowance))
}

pub async fn put(ctx: &Ctx, req: Request) -> HandlerResult {
    let Some(name) = ctx.matched.params.name.clone().filter(|n| valid_name(n)) else {
        return Err(ApiError::bad_request(
            "invalid_secret",
            "secret names are 1-63 lowercase letters, digits and `-`",
        ));
    };
    let (data, allowance) = parse_write(&read_body(req.into_body()).await?)?;
    let now = crate::fsutil::now();
    let record = ctx
        .store(move |s| s.put_secret(&name, &data, &allowance, now))
        .await?;
    let info = record.info();
    ctx.state.sessions.secrets_changed(record.revision);
    tracing::info!(
        secret = %info.name,
        keys = ?info.keys.iter().map(|k| format!("{}={}", k.key, k.fingerprint)).collect::<Vec<_>>(),
        allowed_namespaces = ?info.allowed_namespaces,
        allowed_policies = ?info.allowed_policies,
        allowed_hosts = ?info.allowed_hosts,
        revision = info.revision,
        by = %ctx.principal.subject(),
        "secret stored"
    );
    Ok(json(StatusCode::OK, &info))
}

pub async fn list(ctx: &Ctx) -> HandlerResult {
    let records = ctx.store(|s| s.list_secrets()).await?;
    let mut secrets: Vec<_> = records.iter().map(|r| r.info()).collect();
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(json(StatusCode::OK, &SecretList { secrets }))
}

pub async fn delete(ctx: &Ctx) -> HandlerResult {
    let name = name_param(ctx)?;
    let doomed = name.clone();
    let existing = ctx
        .store(move |s| s.get_secret(&doomed))
        .await?
        .ok_or_else(|| ApiError::not_found("secret not found"))?;
    let doomed = name.clone();
    if !ctx.store(move |s| s.delete_secret(&doomed)).await? {
        return Err(ApiError::not_found("secret not found"));
    }
    ctx.state.sessions.secrets_changed(existing.revision);
    tracing::info!(secret = %name, by = %ctx.principal.subject(), "secret deleted");
    Ok(json(StatusCode::OK, &existing.info()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keys_and_bodies() {
        assert!(valid_name("github"));
        assert!(valid_name("gh-token-1"));
        assert!(!valid_name("-x") && !valid_name("X") && !valid_name("") && !valid_name("0.5"));
        let (ok, none) = parse_write(br#"{"data":{"token":"v"}}"#).unwrap();
        assert_eq!(ok["token"], "v");
        assert_eq!(
            none,
            SecretAllowance::default(),
            "no allowance: usable by nobody"
        );
        let (_, a) = parse_write(
            br#"{"data":{"token":"v"},"allowedNamespaces":["ns-a"],"allowedPolicies":["ns-a/web","ci"],"allowedHosts":["api.github.com:443","*.example.com"]}"#,
        )
        .unwrap();
        assert_eq!(a.namespaces, vec!["ns-a"]);
        assert_eq!(a.policies, vec!["ns-a/web", "ci"]);
        assert_eq!(a.hosts, vec!["api.github.com:443", "*.example.com"]);
        let e =
            parse_write(br#"{"data":{"token":"hunter2-value"},"allowedHosts":["*"]}"#).unwrap_err();
        assert_eq!(e.code, "invalid_secret");
        assert!(
            e.reason.contains("allowedHosts") && !e.reason.contains("hunter2"),
            "{e:?}"
        );
        let e = parse_write(br#"{"data":{"token":"hunter2-value"},"allowedNamespace":["x"]}"#)
            .unwrap_err();
        assert_eq!(e.code, "invalid_json", "unknown fields are refused");
        assert!(!e.reason.contains("hunter2"), "{e:?}");
        let e = parse_write(br#"{"data":{"token":5}}"#).unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse_write(br#"{"data":{"token":"hunter2-value", "x": 1}}"#).unwrap_err();
        assert!(!e.reason.contains("hunter2"), "{e:?}");
        assert_eq!(
            parse_write(br#"{"data":{}}"#).unwrap_err().code,
            "invalid_secret"
        );
    }
}
