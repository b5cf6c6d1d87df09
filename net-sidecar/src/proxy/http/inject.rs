//! Credential injection for inspected requests: the header the deciding rule's credential
//! becomes, checked against the endpoints a gateway-delivered secret is bound to.
//!
//! Owns: the binding check (a delivered secret goes only where the gateway bound it), asking
//! the credential source for the secret (static, token grant, workload token) on the
//! normalised path, the `credential_injected` audit event with the secret's fingerprint,
//! and the injection counter. A credential that cannot be produced, or is not bound here,
//! fails the request closed ([`Refusal::CredentialUnavailable`],
//! [`Refusal::CredentialMismatch`]).
//! Must never: log or answer with a secret value (fingerprints only), or produce a
//! credential for a request that is not inspected (it would travel in clear text).

use std::net::SocketAddr;

use http::header::{HeaderName, HeaderValue};
use palisade_policy::{CompiledPolicy, normalize_path};

use crate::credentials::token_grant::RequestTarget;
use crate::credentials::{CredentialError, header_for};
use crate::proxy::Shared;
use crate::proxy::decide::{Plan, Refusal};

/// The header to inject for `plan`'s credential, if its rule has one, for a request to
/// `host:port` with the raw path `raw_path`, from `client`.
pub async fn credential_header(
    shared: &Shared,
    policy: &CompiledPolicy,
    plan: &Plan,
    client: SocketAddr,
    (host, port): (&str, u16),
    raw_path: &str,
) -> Result<Option<(HeaderName, HeaderValue)>, Refusal> {
    let Some(name) = plan.rule.and_then(|id| policy.rule(id).credential()) else {
        return Ok(None);
    };
    let path = normalize_path(raw_path);
    // A gateway-delivered secret goes only to the endpoints it is bound to.
    if let Some(def) = policy.credential(name)
        && let Err(why) = shared
            .credentials
            .check_binding(name, def, host, port, path.as_deref())
    {
        return Err(Refusal::CredentialMismatch {
            credential: name.to_owned(),
            rule: plan.rule_label.clone(),
            why: why.to_string(),
        });
    }
    // Normalised like the rule match (a path that cannot be normalised was refused).
    let path = path.unwrap_or_else(|| raw_path.to_owned());
    let mut kind = "undefined";
    let result = match policy.credential(name) {
        None => Err(CredentialError::Undefined(name.to_owned())),
        Some(def) => {
            let source = shared.credentials.source(name, def);
            kind = source.kind();
            let target = RequestTarget {
                host,
                port,
                path: &path,
            };
            match source.get_for(&target).await {
                Ok(secret) => header_for(def, &secret).map(|h| (h, secret.fingerprint())),
                Err(err) => Err(err),
            }
        }
    };
    match result {
        Ok((header, fingerprint)) => {
            shared
                .metrics
                .credential_injections
                .with_label_values(&[name, "injected"])
                .inc();
            tracing::info!(
                target: "audit",
                event = "credential_injected",
                credential = name,
                source = kind,
                rule = plan.rule_label.as_str(),
                policy = policy.name(),
                header = header.0.as_str(),
                fingerprint = fingerprint.as_str(),
                client = %client,
                name = host,
                "credential injected"
            );
            Ok(Some(header))
        }
        Err(err) => Err(Refusal::CredentialUnavailable {
            credential: name.to_owned(),
            rule: plan.rule_label.clone(),
            source: kind,
            error: err.to_string(),
        }),
    }
}
