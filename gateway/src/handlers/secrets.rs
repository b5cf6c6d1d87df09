//! Secrets in the gateway store: `PUT /v1/secrets/{name}`, `GET /v1/secrets`,
//! `DELETE /v1/secrets/{name}` (admin). Values go into the store and, through
//! sessions, to the sidecars whose policies name them — nowhere else: answers
//! and logs carry names, key names and SHA-256 fingerprints only.

use std::collections::BTreeMap;

use http::StatusCode;
use palisade_api::session::{SecretList, SecretWrite};

use super::{Ctx, HandlerResult};
use crate::http::{ApiError, Request, json, read_body};

/// Keys per secret.
const MAX_KEYS: usize = 64;

/// Secret names are DNS labels, like policy names (the documented `{name}`).
fn valid_name(s: &str) -> bool {
    super::valid_label(s)
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
fn parse_write(bytes: &[u8]) -> Result<BTreeMap<String, String>, ApiError> {
    let write: SecretWrite = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "the body must be {{\"data\": {{\"KEY\": \"VALUE\", ...}}}} (error at line {}, column {})",
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
    // Key names are free-form (the schema's); they are logged escaped (`?`).
    Ok(write.data)
}

pub async fn put(ctx: &Ctx, req: Request) -> HandlerResult {
    let Some(name) = ctx.matched.params.name.clone().filter(|n| valid_name(n)) else {
        return Err(ApiError::bad_request(
            "invalid_secret",
            "secret names are 1-63 lowercase letters, digits and `-`",
        ));
    };
    let data = parse_write(&read_body(req.into_body()).await?)?;
    let now = crate::fsutil::now();
    let record = ctx.store(move |s| s.put_secret(&name, &data, now)).await?;
    let info = record.info();
    ctx.state.sessions.secrets_changed(record.revision);
    tracing::info!(
        secret = %info.name,
        keys = ?info.keys.iter().map(|k| format!("{}={}", k.key, k.fingerprint)).collect::<Vec<_>>(),
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
        let ok = parse_write(br#"{"data":{"token":"v"}}"#).unwrap();
        assert_eq!(ok["token"], "v");
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
