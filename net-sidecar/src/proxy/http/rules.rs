//! A policy rule's `http` section applied to one request: method, every method override,
//! path and query.
//!
//! Owns: refusing paths that HTTP rules cannot judge unambiguously (`;` path parameters,
//! paths that do not normalise: 400, [`judged_path`]), rewriting the request to the normalised path (so
//! the upstream sees exactly what was judged), deciding the method and every override the
//! head carries ([`super::method`]) with deny winning, and, once the body window is read,
//! `_method` in a urlencoded form body ([`form_override`]).
//! Must never: judge one path and send another, or let an override widen what the rule
//! allows.

use std::str::FromStr;

use http::Method;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{StatusCode, Uri};
use palisade_policy::{CompiledPolicy, Decision, RuleId, judged_path};

use super::body::Preread;
use super::method;
use crate::admin::metrics::BadInput;
use crate::proxy::decide::{Plan, Refusal};

/// What the HTTP rules were checked on, kept for the form-body override check.
pub struct Judged {
    path: String,
    query: Option<String>,
    overrides: Vec<String>,
}

/// Apply the rule's `http` section, if any. The path is normalised first (and the request
/// rewritten to it, so the upstream sees exactly what was judged); ambiguous paths, `;`
/// path parameters and method overrides that are not methods are refused (400). The method
/// and every override the head carries (headers, `_method` in the query) are decided, deny
/// wins. Returns what was judged when the rule has HTTP rules.
pub fn http_rules(
    policy: &CompiledPolicy,
    mut plan: Plan,
    parts: &mut Parts,
) -> Result<(Plan, Option<Judged>), Refusal> {
    let Some(id) = plan.rule else {
        return Ok((plan, None));
    };
    if !policy.rule(id).has_http_rules() {
        return Ok((plan, None));
    }
    let path = judged_path(parts.uri.path())
        .map_err(|problem| Refusal::bad_request(BadInput::AmbiguousPath, problem.message()))?;
    let query = parts.uri.query().map(str::to_owned);
    let overrides = method::overrides(&parts.headers, query.as_deref())
        .map_err(|why| Refusal::bad_request(BadInput::BadMethodOverride, why))?;
    let judged = Judged {
        path,
        query,
        overrides,
    };
    judge(policy, &mut plan, &parts.method, &judged.overrides, &judged)?;
    let pq = match &judged.query {
        Some(q) => format!("{}?{q}", judged.path),
        None => judged.path.clone(),
    };
    let mut uri = parts.uri.clone().into_parts();
    uri.path_and_query = Some(
        PathAndQuery::from_str(&pq)
            .map_err(|_| Refusal::bad_request(BadInput::MalformedHttp, "invalid request path"))?,
    );
    parts.uri = Uri::from_parts(uri)
        .map_err(|_| Refusal::bad_request(BadInput::MalformedHttp, "invalid request target"))?;
    Ok((plan, Some(judged)))
}

/// `_method` in a urlencoded form body (Rails, Laravel, Symfony, Spring), decided like the
/// overrides of the head once the body window (`preread`) is in — only when the rule's
/// answer depends on the method at all. A form longer than the window cannot be checked
/// (413).
pub fn form_override(
    policy: &CompiledPolicy,
    plan: &mut Plan,
    parts: &Parts,
    judged: Option<&Judged>,
    preread: &Preread,
) -> Result<(), Refusal> {
    let Some(judged) = judged else {
        return Ok(());
    };
    if !method::is_form(&parts.method, &parts.headers) || !method_matters(policy, plan.rule, judged)
    {
        return Ok(());
    }
    if !preread.complete() {
        let why = "a urlencoded form body longer than the sidecar reads ahead cannot be \
                   checked for a `_method` override; send it with another Content-Type";
        return Err(Refusal::BadRequest {
            kind: Some(BadInput::FormTooLarge),
            status: StatusCode::PAYLOAD_TOO_LARGE,
            why: why.into(),
            close: false,
        });
    }
    let mut overrides = judged.overrides.clone();
    method::form_overrides(&mut overrides, &preread.data)
        .map_err(|why| Refusal::bad_request(BadInput::BadMethodOverride, why))?;
    if overrides.len() > judged.overrides.len() {
        judge(policy, plan, &parts.method, &overrides, judged)?;
    }
    Ok(())
}

/// Decide `method` and every override on the judged path and query (deny wins); a denial is
/// recorded on `plan` (audit mode) or returned, labelled with the denying rule.
fn judge(
    policy: &CompiledPolicy,
    plan: &mut Plan,
    method: &Method,
    overrides: &[String],
    judged: &Judged,
) -> Result<(), Refusal> {
    let Some(id) = plan.rule else { return Ok(()) };
    let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
    if let Decision::Deny { reason, rule, .. } = policy.match_request_methods(
        id,
        method.as_str(),
        &overrides,
        &judged.path,
        judged.query.as_deref(),
    ) {
        let rule_label = rule.unwrap_or("none").to_owned();
        plan.deny_late(policy, reason)
            .map_err(|_| Refusal::Denied { reason, rule_label })?;
    }
    Ok(())
}

/// Whether the deciding rule's answer for this path and query depends on the method at
/// all. When every method (the standard ones and an unknown token) is allowed, no override
/// can change the decision and a form body need not be read for one.
fn method_matters(policy: &CompiledPolicy, rule: Option<RuleId>, judged: &Judged) -> bool {
    const PROBES: [&str; 10] = [
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
        "TRACE",
        "CONNECT",
        "X-PALISADE-ANY",
    ];
    let Some(id) = rule else { return false };
    !PROBES.iter().all(|m| {
        policy
            .match_request(id, m, &judged.path, judged.query.as_deref())
            .is_allow()
    })
}
