//! Policies: `PUT /v1/policies/{name}[?namespace=NS]` (validated by the
//! policy crate, errors with field paths; then the gateway's own rules: no
//! `file`/`env` credential sources, and every secret it names must allow it),
//! `GET /v1/policies/{name}`, and the sidecar's
//! `GET /v1/sandboxes/{id}/policy?wait=30s&revision=N` long-poll.
//!
//! A policy belongs to a namespace or is cluster-wide (no `namespace`:
//! written only by admins, readable and usable by every namespace). Names are
//! one key space; a policy's namespace is fixed when it is created. A sandbox
//! is served only a policy of its own namespace or a cluster-wide one.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use palisade_api::{ErrorBody, FieldError, InvalidPolicyBody, StoredPolicy};
use palisade_policy::{PolicyError, PolicyErrors, parse_policy};

use super::ctx::{Ctx, HandlerResult};
use super::sandboxes::visible_sandbox;
use crate::config::MAX_LONG_POLL;
use crate::duration::parse_duration;
use crate::http::{ApiError, Request, Response, json, read_body};
use crate::principal::valid_label;
use crate::routes::authorize_namespace;
use crate::sessions::credentials;
use crate::store::{Precondition, policy_usable_by};

/// Attempts at an unconditional write that races other writers of the same
/// policy (on a replicated gateway, writers on every replica race).
const WRITE_ATTEMPTS: usize = 16;

fn policy_answer(policy: &StoredPolicy) -> Response {
    let mut resp = json(StatusCode::OK, policy);
    if let Ok(v) = HeaderValue::from_str(&policy.etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn invalid(errors: &PolicyErrors) -> Response {
    let field_errors = errors
        .0
        .iter()
        .map(|e| FieldError {
            path: e.path.clone(),
            line: e.location.map(|(l, _)| l),
            column: e.location.map(|(_, c)| c),
            message: e.message.clone(),
        })
        .collect();
    refused(
        "invalid_policy",
        format!(
            "the policy has {} error(s); fix them (see `errors`) and resubmit",
            errors.0.len()
        ),
        field_errors,
    )
}

/// A 422 with one [`FieldError`] per problem.
fn refused(code: &str, reason: String, errors: Vec<FieldError>) -> Response {
    let body = InvalidPolicyBody {
        error: ErrorBody {
            error: code.to_owned(),
            rule: None,
            reason,
            host: None,
        },
        errors,
    };
    json(StatusCode::UNPROCESSABLE_ENTITY, &body)
}

fn field(path: String, message: String) -> FieldError {
    FieldError {
        path,
        line: None,
        column: None,
        message,
    }
}

/// `?namespace=NS` of a policy write (absent: cluster-wide).
fn namespace_query(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut namespace = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("namespace", v)) if valid_label(v) && namespace.is_none() => {
                namespace = Some(v.to_owned());
            }
            Some(("namespace", v)) => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "namespace `{v}`: give it once, as 1-63 lowercase letters, digits and `-`"
                    ),
                ));
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "the only query parameter of a policy write is namespace=NS",
                ));
            }
        }
    }
    Ok(namespace)
}

/// The refusal for writing into `namespace` when the principal may not.
fn may_not_write(namespace: Option<&str>) -> ApiError {
    match namespace {
        None => ApiError::forbidden(
            "only an admin may write a cluster-wide policy; write it into one of your \
             namespaces (?namespace=NS, `palisade policy set --namespace NS`)",
        ),
        Some(ns) => ApiError::forbidden(format!("you may not write policies of namespace `{ns}`")),
    }
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

fn precondition_failed(current: Option<String>) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        match current {
            Some(etag) => format!(
                "the policy changed (its ETag is now {etag}); GET it, reapply your change, and retry"
            ),
            None => "the policy does not exist (If-Match needs an existing policy)".to_owned(),
        },
    )
}

/// Whether the caller may replace `current` (the stored version of policy
/// `name`, if any) with a policy of `namespace`: it must manage the current
/// version's namespace (403), and the namespace must not change (409).
fn may_replace(
    ctx: &Ctx,
    name: &str,
    namespace: Option<&str>,
    current: Option<&StoredPolicy>,
) -> Result<(), ApiError> {
    let Some(cur) = current else {
        return Ok(());
    };
    if !authorize_namespace(ctx.matched.route, &ctx.principal, cur.namespace.as_deref()) {
        return Err(ApiError::forbidden(format!(
            "policy `{name}` exists and you may not change it (it is {}); choose another name",
            match &cur.namespace {
                None => "cluster-wide: admin only",
                Some(_) => "in a namespace you do not manage",
            }
        )));
    }
    if cur.namespace.as_deref() != namespace {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_namespace_conflict",
            format!(
                "policy `{name}` belongs to {}; a policy's namespace is fixed when it is \
                 created: write it {}",
                match &cur.namespace {
                    None => "no namespace (it is cluster-wide)".to_owned(),
                    Some(ns) => format!("namespace `{ns}`"),
                },
                match &cur.namespace {
                    None => "without ?namespace".to_owned(),
                    Some(ns) => format!("with ?namespace={ns}"),
                }
            ),
        ));
    }
    Ok(())
}

pub async fn put(ctx: &Ctx, req: Request) -> HandlerResult {
    let name = name_param(ctx)?;
    let namespace = namespace_query(req.uri().query())?;
    let precondition = precondition(req.headers())?;
    let route = ctx.matched.route;
    if !authorize_namespace(route, &ctx.principal, namespace.as_deref()) {
        return Err(may_not_write(namespace.as_deref()));
    }
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
    let local_only = credentials::local_only_sources(&policy);
    if !local_only.is_empty() {
        return Ok(refused(
            "invalid_policy",
            format!(
                "the policy has {} credential source(s) a gateway-delivered policy may not use \
                 (see `errors`)",
                local_only.len()
            ),
            local_only.into_iter().map(|(p, m)| field(p, m)).collect(),
        ));
    }
    let document = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("invalid_policy", "the policy is not UTF-8"))?;
    // Who may write it comes before what it says (checked again at the write).
    let lookup = name.clone();
    let mut current = ctx.store(move |s| s.get_policy(&lookup)).await?;
    may_replace(ctx, &name, namespace.as_deref(), current.as_ref())?;
    // Every secret it names must allow this policy and every host it binds.
    let policy = std::sync::Arc::new(policy);
    let (checked, ns) = (policy.clone(), namespace.clone());
    let problems = ctx
        .store(move |s| credentials::check_policy(&checked, ns.as_deref(), s))
        .await?;
    if !problems.is_empty() {
        let reason = problems
            .iter()
            .map(|(_, r)| r.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        tracing::info!(policy = %name, namespace = ?namespace, by = %ctx.principal.subject(),
            refusals = problems.len(), "policy refused: secrets do not allow it");
        return Ok(refused(
            "secret_not_allowed",
            reason,
            problems
                .into_iter()
                .map(|(p, r)| field(p, r.to_string()))
                .collect(),
        ));
    }
    let mut attempt = 0;
    let stored = loop {
        attempt += 1;
        if attempt > 1 {
            let lookup = name.clone();
            current = ctx.store(move |s| s.get_policy(&lookup)).await?;
            may_replace(ctx, &name, namespace.as_deref(), current.as_ref())?;
        }
        let current_etag = current.as_ref().map(|c| c.etag.clone());
        if !precondition.holds(current_etag.as_deref()) {
            return Err(precondition_failed(current_etag));
        }
        // What was checked above is what gets replaced, or nothing is written.
        let guard = match current_etag {
            Some(etag) => Precondition::IfMatch(etag),
            None => Precondition::IfNoneMatchAny,
        };
        let (n, ns, doc, now) = (
            name.clone(),
            namespace.clone(),
            document.clone(),
            crate::fsutil::now(),
        );
        match ctx
            .store(move |s| s.put_policy_if(&n, ns.as_deref(), &doc, now, &guard))
            .await?
        {
            Ok(stored) => break stored,
            // Someone wrote it in between: an unconditional write checks again.
            Err(_) if precondition == Precondition::None && attempt < WRITE_ATTEMPTS => continue,
            Err(current) => return Err(precondition_failed(current)),
        }
    };
    ctx.state.policy_revision.send_replace(stored.revision);
    tracing::info!(policy = %stored.name, namespace = ?stored.namespace, revision = stored.revision, by = %ctx.principal.subject(), "policy stored");
    Ok(policy_answer(&stored))
}

pub async fn get(ctx: &Ctx) -> HandlerResult {
    let name = name_param(ctx)?;
    let policy = ctx
        .store(move |s| s.get_policy(&name))
        .await?
        .filter(|p| authorize_namespace(ctx.matched.route, &ctx.principal, p.namespace.as_deref()))
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
        if !policy_usable_by(
            policy.namespace.as_deref(),
            sandbox.spec.namespace.as_deref(),
        ) {
            return Err(ApiError::not_found(format!(
                "policy `{name}` is neither cluster-wide nor of this sandbox's namespace, so it \
                 is not served to this sandbox"
            )));
        }
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

    #[test]
    fn namespace_query_parsing() {
        assert_eq!(namespace_query(None).unwrap(), None);
        assert_eq!(namespace_query(Some("")).unwrap(), None);
        assert_eq!(
            namespace_query(Some("namespace=ns-a")).unwrap().as_deref(),
            Some("ns-a")
        );
        for bad in [
            "namespace=",
            "namespace=NS",
            "namespace=a&namespace=b",
            "ns=a",
            "namespace",
        ] {
            assert_eq!(namespace_query(Some(bad)).unwrap_err().status, 400, "{bad}");
        }
    }
}
