//! `spec.credentials`: names, sources, token endpoints, injection headers,
//! and that every credential is used.

use std::net::IpAddr;

use super::{Problems, syntax};
use crate::error::FieldPath;
use crate::host::{self, HostPattern};
use crate::model::{Credential, CredentialSource, Injection, Policy, TokenGrant};
use crate::model::{GrantOverride, OverrideSelector};

/// Headers a credential may not be injected as: they carry message framing,
/// routing or hop-by-hop meaning, and rewriting them would corrupt the request
/// or let it be smuggled.
pub const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

pub fn check(policy: &Policy, spec: &FieldPath, out: &mut Problems) {
    for (name, credential) in &policy.spec.credentials {
        let path = spec.key("credentials").key(name);
        if let Err(why) = syntax::dns_label(name) {
            out.push(path.clone(), format!("credential name `{name}` {why}"));
        }
        if !policy
            .spec
            .egress
            .iter()
            .any(|r| r.credential.as_deref() == Some(name.as_str()))
        {
            out.push(
                path.clone(),
                format!(
                    "credential `{name}` is defined but no egress rule uses it; reference it with \
                     `credential: {name}` or remove it"
                ),
            );
        }
        check_credential(policy, name, credential, &path, out);
    }
}

fn check_credential(
    policy: &Policy,
    name: &str,
    credential: &Credential,
    path: &FieldPath,
    out: &mut Problems,
) {
    let from = path.key("from");
    match &credential.from {
        CredentialSource::Secret { name, key } => {
            let at = from.key("secret");
            if !syntax::dns_subdomain(name) {
                out.push(
                    at.key("name"),
                    format!("secret name `{name}` is invalid: use lowercase letters, digits, `-` and `.` (a Kubernetes Secret name)"),
                );
            }
            if key.is_empty()
                || key.len() > 253
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                out.push(
                    at.key("key"),
                    format!("secret key `{key}` is invalid: use letters, digits, `-`, `_` and `.`"),
                );
            }
        }
        CredentialSource::File(file) => {
            if !file.starts_with('/') || file.contains('\0') {
                out.push(
                    from.key("file"),
                    format!("file `{file}` must be an absolute path (`/var/run/secrets/token`)"),
                );
            }
        }
        CredentialSource::Env(var) => {
            if !syntax::env_name(var) {
                out.push(
                    from.key("env"),
                    format!("environment variable name `{var}` is invalid: use letters, digits and `_`, not starting with a digit"),
                );
            }
        }
        CredentialSource::TokenGrant(grant) => {
            check_grant(policy, name, grant, &from.key("tokenGrant"), out)
        }
        CredentialSource::WorkloadToken { audience } => {
            if !syntax::is_word(audience) {
                out.push(
                    from.key("workloadToken").key("audience"),
                    format!("audience `{audience}` is invalid: it may not be empty or contain whitespace"),
                );
            }
        }
    }
    check_injection(&credential.inject, &path.key("inject"), out);
}

fn check_grant(
    policy: &Policy,
    name: &str,
    grant: &TokenGrant,
    path: &FieldPath,
    out: &mut Problems,
) {
    if let Err(why) = check_token_endpoint(&grant.token_endpoint) {
        out.push(
            path.key("tokenEndpoint"),
            format!("token endpoint `{}` {why}", grant.token_endpoint),
        );
    }
    if !syntax::is_word(&grant.svid_audience) {
        out.push(
            path.key("svidAudience"),
            format!(
                "svidAudience `{}` is invalid: it may not be empty or contain whitespace",
                grant.svid_audience
            ),
        );
    }
    if let Some(audience) = &grant.audience
        && !syntax::is_word(audience)
    {
        out.push(
            path.key("audience"),
            format!("audience `{audience}` is invalid: it may not be empty or contain whitespace"),
        );
    }
    check_scopes(&grant.scopes, &path.key("scopes"), out);
    check_overrides(policy, name, &grant.overrides, &path.key("overrides"), out);
}

fn check_scopes(scopes: &[String], path: &FieldPath, out: &mut Problems) {
    for (s, scope) in scopes.iter().enumerate() {
        if !syntax::is_word(scope) || scope.contains('"') || scope.contains('\\') {
            out.push(
                path.index(s),
                format!("scope `{scope}` is invalid: scopes may not be empty or contain whitespace, `\"` or `\\`"),
            );
        } else if scopes[..s].contains(scope) {
            out.push(
                path.index(s),
                format!("duplicate scope `{scope}`; remove it"),
            );
        }
    }
}

/// Per-endpoint overrides: valid selectors that some egress rule using this
/// credential can reach, something to override, and no two selectors that can
/// match the same request unless one is strictly more specific (its matches
/// are a subset of the other's), so the most specific override is unique.
fn check_overrides(
    policy: &Policy,
    name: &str,
    overrides: &[GrantOverride],
    path: &FieldPath,
    out: &mut Problems,
) {
    let mut selectors: Vec<(usize, OverrideSelector)> = Vec::new();
    for (i, o) in overrides.iter().enumerate() {
        let at = path.index(i);
        if o.audience.is_none() && o.scopes.is_none() {
            out.push(
                at.clone(),
                "the override sets neither `audience` nor `scopes`; add one or remove the override"
                    .to_owned(),
            );
        }
        if let Some(audience) = &o.audience
            && !syntax::is_word(audience)
        {
            out.push(
                at.key("audience"),
                format!(
                    "audience `{audience}` is invalid: it may not be empty or contain whitespace"
                ),
            );
        }
        if let Some(scopes) = &o.scopes {
            check_scopes(scopes, &at.key("scopes"), out);
        }
        let selector = match o.selector() {
            Ok(s) => s,
            Err((field, why)) => {
                out.push(at.key(field), why);
                continue;
            }
        };
        if !reachable(policy, name, &selector) {
            let port = selector
                .port
                .map(|p| format!(" port {p}"))
                .unwrap_or_default();
            out.push(
                at.key("host"),
                format!(
                    "no egress rule with `credential: {name}` allows host `{}`{port}, so this \
                     override would never apply; fix the host/port or add it to such a rule",
                    o.host
                ),
            );
        }
        for (j, earlier) in &selectors {
            if *earlier == selector {
                out.push(
                    at.clone(),
                    format!("the override selects the same requests as overrides[{j}]; merge them"),
                );
            } else if selector.overlaps(earlier)
                && !selector.within(earlier)
                && !earlier.within(&selector)
            {
                out.push(
                    at.clone(),
                    format!(
                        "the override overlaps overrides[{j}] (a request can match both) and \
                         neither is more specific; give one of them a port or a longer path \
                         so that it selects a subset of the other's requests"
                    ),
                );
            }
        }
        selectors.push((i, selector));
    }
}

/// Some egress rule using credential `name` covers the selector's host (and
/// port, when it names one).
fn reachable(policy: &Policy, name: &str, selector: &OverrideSelector) -> bool {
    policy
        .spec
        .egress
        .iter()
        .filter(|r| r.credential.as_deref() == Some(name))
        .filter(|r| {
            selector
                .port
                .is_none_or(|p| r.ports.contains(&u32::from(p)))
        })
        .flat_map(|r| r.hosts.iter())
        .any(|h| match host::parse_pattern(h) {
            Ok(HostPattern::Exact(n)) => n == selector.host,
            Ok(HostPattern::Ip(ip)) => ip.to_string() == selector.host,
            Ok(HostPattern::Wildcard(parent)) => selector
                .host
                .strip_suffix(parent.as_str())
                .and_then(|l| l.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            Err(_) => false,
        })
}

/// `https://host[:port][/path]`; `http` only for loopback and in-cluster names.
fn check_token_endpoint(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(
            "is not an absolute URL; write `https://auth.example.com/oauth/token`".to_owned(),
        );
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(format!(
            "uses the scheme `{scheme}`; token endpoints use https"
        ));
    }
    if url.contains('#') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "may not contain a fragment (`#`), whitespace or control characters".to_owned(),
        );
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "carries credentials (`user@`); put client credentials in the grant, never in the URL"
                .to_owned(),
        );
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("has an unclosed `[`")?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err(format!("has the port `{port}`; ports are 1-65535"));
    }
    let local = match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => match host::parse_pattern(host) {
            Ok(HostPattern::Exact(name)) => {
                name == "localhost"
                    || name.ends_with(".svc")
                    || name.ends_with(".svc.cluster.local")
            }
            Ok(_) => return Err("must name one host, not a wildcard".to_owned()),
            Err(why) => return Err(format!("has an invalid host: {why}")),
        },
    };
    if scheme == "http" && !local {
        return Err(
            "uses http; tokens must travel over https (http is allowed only for loopback \
                    and in-cluster `*.svc` / `*.svc.cluster.local` names)"
                .to_owned(),
        );
    }
    Ok(())
}

fn check_injection(inject: &Injection, path: &FieldPath, out: &mut Problems) {
    let header = &inject.header;
    if !syntax::is_token(header) {
        out.push(
            path.key("header"),
            format!("header name `{header}` is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"),
        );
    } else if FORBIDDEN_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(header))
    {
        out.push(
            path.key("header"),
            format!(
                "header `{header}` may not be injected: it controls message framing or is \
                 hop-by-hop, and rewriting it would corrupt or smuggle requests; use \
                 `Authorization` or an API-specific header"
            ),
        );
    }
    if let Some(scheme) = &inject.scheme
        && !syntax::is_token(scheme)
    {
        out.push(
            path.key("scheme"),
            format!("scheme `{scheme}` is invalid: write one word such as `Bearer` or `token`, or omit it to send the raw value"),
        );
    }
}
