//! Policies: `PUT /v1/policies/{name}` (validated by the policy crate, errors
//! with field paths), `GET /v1/policies/{name}`, and the sidecar's
//! `GET /v1/sandboxes/{id}/policy?wait=30s&revision=N` long-poll.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use palisade_api::{ErrorBody, FieldError, InvalidPolicyBody, StoredPolicy};
use palisade_policy::{PolicyError, PolicyErrors, parse_policy};

use super::sandboxes::visible_sandbox;
use super::{Ctx, HandlerResult, valid_label};
use crate::config::{MAX_LONG_POLL, parse_duration};
use crate::http::{ApiError, Request, Response, json, read_body};
use crate::store::Precondition;

fn policy_answer(policy: &StoredPolicy) -> Response {
    let mut resp = json(StatusCode::OK, policy);
    if let Ok(v) = HeaderValue::from_str(&policy.etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn invalid(errors: &PolicyErrors) -> Response {
    let body = InvalidPolicyBody {
        error: ErrorBody {
            error: "invalid_policy".to_owned(),
            rule: None,
            reason: format!(
                "the policy has {} error(s); fix them (see `errors`) and resubmit",
                errors.0.len()
            ),
            host: None,
        },
        errors: errors
            .0
            .iter()
            .map(|e| FieldError {
                path: e.path.clone(),
                line: e.location.map(|(l, _)| l),
                column: e.location.map(|(_, c)| c),
                message: e.message.clone(),
            })
            .collect(),
    };
    json(StatusCode::UNPROCESSABLE_ENTITY, &body)
}

fn name_param(ctx: &Ctx) -> Result<String, ApiError> {
    ctx.matched
        .params
        .name
        .clone()
        .filter(|n| valid_label(n))
        .ok_or_else(|| ApiError::not_found("policy not found"))
}

/// `If-Match: "<etag>"` or `If-None-Match: *` on a policy write.
fn precondition(headers: &http::HeaderMap) -> Result<Precondition, ApiError> {
    let value = |name: http::header::HeaderName| {
        headers
            .get(&name)
            .map(|v| {
                v.to_str().map(str::trim).map_err(|_| {
                    ApiError::bad_request("invalid_header", format!("{name} is not ASCII"))
                })
            })
            .transpose()
    };
    match (value(header::IF_MATCH)?, value(header::IF_NONE_MATCH)?) {
        (None, None) => Ok(Precondition::None),
        (Some(etag), None) if etag != "*" => Ok(Precondition::IfMatch(etag.to_owned())),
        (None, Some("*")) => Ok(Precondition::IfNoneMatchAny),
        _ => Err(ApiError::bad_request(
            "invalid_header",
            "use either If-Match: \"<etag>\" or If-None-Match: * on policy writes",
        )),
    }
}

pub async fn put(ctx: &Ctx, req: Request) -> HandlerResult {
    let name = name_param(ctx)?;
    let precondition = precondition(req.headers())?;
    let bytes = read_body(req.into_body()).await?;
    let policy = match parse_policy(&bytes) {
        Ok(p) => p,
        Err(errors) => return Ok(invalid(&errors)),
    };
    if policy.metadata.name != name {
        return Ok(invalid(&PolicyErrors::single(PolicyError {
            path: "metadata.name".to_owned(),
            location: None,
            message: format!(
                "`{}` does not match the name in the URL (`{name}`)",
                policy.metadata.name
            ),
        })));
    }
    let document = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("invalid_policy", "the policy is not UTF-8"))?;
    let now = crate::fsutil::now();
    let stored = match ctx
        .store(move |s| s.put_policy_if(&name, &document, now, &precondition))
        .await?
    {
        Ok(stored) => stored,
        Err(current) => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                match current {
                    Some(etag) => format!(
                        "the policy changed (its ETag is now {etag}); GET it, reapply your change, and retry"
                    ),
                    None => {
                        "the policy does not exist (If-Match needs an existing policy)".to_owned()
                    }
                },
            ));
        }
    };
    ctx.state.policy_revision.send_replace(stored.revision);
    tracing::info!(policy = %stored.name, revision = stored.revision, by = %ctx.principal.subject(), "policy stored");
    Ok(policy_answer(&stored))
}

pub async fn get(ctx: &Ctx) -> HandlerResult {
    let name = name_param(ctx)?;
    let policy = ctx
        .store(move |s| s.get_policy(&name))
        .await?
        .ok_or_else(|| ApiError::not_found("policy not found"))?;
    Ok(policy_answer(&policy))
}

#[derive(Debug, Default, PartialEq, Eq)]
struct WaitQuery {
    wait: Option<Duration>,
    revision: Option<u64>,
}

fn parse_query(query: Option<&str>) -> Result<WaitQuery, ApiError> {
    let mut out = WaitQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "wait" => {
                let d = parse_duration(v)
                    .map_err(|e| ApiError::bad_request("invalid_query", format!("wait: {e}")))?;
                out.wait = Some(d.min(MAX_LONG_POLL));
            }
            "revision" => {
                out.revision = Some(v.parse().map_err(|_| {
                    ApiError::bad_request("invalid_query", "revision must be a whole number")
                })?);
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter `{k}`; use wait and revision"),
                ));
            }
        }
    }
    Ok(out)
}

/// The policy of the sandbox; with `revision=N&wait=D`, waits up to `D`
/// (≤ 30s) for a revision newer than `N`, answering 304 if none came.
pub async fn for_sandbox(ctx: &Ctx, req: Request) -> HandlerResult {
    let query = parse_query(req.uri().query())?;
    let sandbox = visible_sandbox(ctx).await?;
    let Some(name) = sandbox.spec.policy.clone() else {
        return Err(ApiError::not_found("this sandbox has no policy assigned"));
    };
    let mut changes = ctx.state.policy_revision.subscribe();
    let deadline = tokio::time::Instant::now() + query.wait.unwrap_or_default();
    loop {
        let lookup = name.clone();
        let policy = ctx
            .store(move |s| s.get_policy(&lookup))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("policy `{name}` does not exist yet")))?;
        let Some(seen) = query.revision else {
            return Ok(policy_answer(&policy));
        };
        if policy.revision > seen {
            return Ok(policy_answer(&policy));
        }
        let changed = tokio::time::timeout_at(deadline, changes.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            let mut resp = crate::http::Response::new(Default::default());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            if let Ok(v) = HeaderValue::from_str(&policy.etag) {
                resp.headers_mut().insert(header::ETAG, v);
            }
            return Ok(resp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(parse_query(None).unwrap(), WaitQuery::default());
        let q = parse_query(Some("wait=90s&revision=7")).unwrap();
        assert_eq!(q.wait, Some(MAX_LONG_POLL));
        assert_eq!(q.revision, Some(7));
        assert_eq!(parse_query(Some("wait=x")).unwrap_err().status, 400);
        assert_eq!(parse_query(Some("revision=-1")).unwrap_err().status, 400);
        assert_eq!(parse_query(Some("foo=1")).unwrap_err().status, 400);
    }
}
