//! SPIFFE token grants: `from: {tokenGrant: {tokenEndpoint, grant, svidAudience, audience?,
//! scopes?, overrides?}}`.
//!
//! Owns: fetching the sandbox's JWT-SVID from the SPIFFE Workload API (unix socket, sidecar-only
//! mount), exchanging it at the OAuth token endpoint (RFC 7523 client assertion or RFC 8693 token
//! exchange) with a hardened HTTP client, picking the per-endpoint override for a request, and a
//! bounded, single-flight token cache shared by every grant of the sidecar.
//! Must never: put a token (SVID or access token) in a log line, metric or error; follow a
//! redirect; use a proxy; talk plain HTTP to anything but loopback or an in-cluster `*.svc` name;
//! hand out a token that is not token68.

mod cache;
mod client;
mod metrics;
mod oauth;
mod svid;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use palisade_policy::model::{GrantType, OverrideSelector, TokenGrant};

use super::{CredentialError, CredentialSource, GetFuture, Secret};

pub use self::client::{TokenGrantClient, TokenGrantConfig};
pub use self::metrics::TokenGrantMetrics;

/// What a request is for, as far as choosing a per-endpoint override goes.
#[derive(Debug, Clone, Copy)]
pub struct RequestTarget<'a> {
    /// Host as the request names it (SNI / `Host`), any case, optional trailing dot.
    pub host: &'a str,
    pub port: u16,
    /// The request path without the query.
    pub path: &'a str,
}

/// Everything that changes the token an endpoint returns: the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    pub endpoint: Arc<str>,
    pub grant: GrantType,
    pub svid_audience: Arc<str>,
    pub audience: Option<Arc<str>>,
    /// Space-separated, in policy order (`scope` as sent).
    pub scope: Option<Arc<str>>,
}

/// `from: {tokenGrant: …}` for one policy credential. Cheap to build; the expensive state
/// (Workload API, TLS, cache) lives in the shared [`TokenGrantClient`].
#[derive(Debug)]
pub struct TokenGrantSource {
    client: TokenGrantClient,
    base: TokenKey,
    /// Overrides with their selectors, in policy order (validation guarantees that the
    /// matching ones are totally ordered by specificity).
    overrides: Vec<(OverrideSelector, TokenKey)>,
    /// A definition that could not be prepared (validation normally refuses it first).
    broken: Option<String>,
}

impl TokenGrantSource {
    pub fn new(grant: &TokenGrant, client: TokenGrantClient) -> Self {
        let endpoint: Arc<str> = Arc::from(grant.token_endpoint.as_str());
        let svid_audience: Arc<str> = Arc::from(grant.svid_audience.as_str());
        let scope_of = |scopes: &[String]| -> Option<Arc<str>> {
            (!scopes.is_empty()).then(|| Arc::from(scopes.join(" ").as_str()))
        };
        let base = TokenKey {
            endpoint: endpoint.clone(),
            grant: grant.grant,
            svid_audience: svid_audience.clone(),
            audience: grant.audience.as_deref().map(Arc::from),
            scope: scope_of(&grant.scopes),
        };
        let mut overrides = Vec::with_capacity(grant.overrides.len());
        let mut broken = None;
        for (i, o) in grant.overrides.iter().enumerate() {
            match o.selector() {
                Ok(selector) => {
                    let key = TokenKey {
                        audience: match &o.audience {
                            Some(a) => Some(Arc::from(a.as_str())),
                            None => base.audience.clone(),
                        },
                        scope: match &o.scopes {
                            Some(s) => scope_of(s),
                            None => base.scope.clone(),
                        },
                        ..base.clone()
                    };
                    overrides.push((selector, key));
                }
                Err((field, why)) => {
                    broken = Some(format!("overrides[{i}].{field}: {why}"));
                }
            }
        }
        Self {
            client,
            base,
            overrides,
            broken,
        }
    }

    /// The token for a request to `target`: the most specific matching override's audience
    /// and scopes, else the grant's own.
    pub async fn token_for(&self, target: &RequestTarget<'_>) -> Result<Secret, CredentialError> {
        let key = self.key_for(Some(target))?;
        self.client.token(key).await
    }

    /// The cache key for a request (`None`: no request context is known).
    fn key_for(&self, target: Option<&RequestTarget<'_>>) -> Result<&TokenKey, CredentialError> {
        if let Some(why) = &self.broken {
            return Err(CredentialError::Unreadable(format!(
                "the tokenGrant definition is unusable ({why}); fix the policy"
            )));
        }
        if self.overrides.is_empty() {
            return Ok(&self.base);
        }
        let Some(target) = target else {
            return Err(CredentialError::Unreadable(
                "this tokenGrant has per-endpoint overrides, but the proxy asked for a token \
                 without the request's host, port and path; refusing rather than guessing the \
                 audience"
                    .to_owned(),
            ));
        };
        let host =
            palisade_policy::host::with_lookup_key(target.host, str::to_owned).unwrap_or_default();
        let matching: Vec<&(OverrideSelector, TokenKey)> = self
            .overrides
            .iter()
            .filter(|(s, _)| s.matches(&host, target.port, target.path))
            .collect();
        if matching.is_empty() {
            return Ok(&self.base);
        }
        matching
            .iter()
            .find(|(s, _)| matching.iter().all(|(o, _)| s.within(o)))
            .map(|(_, key)| key)
            .ok_or_else(|| {
                CredentialError::Unreadable(
                    "two tokenGrant overrides match this request and neither is more specific; \
                     fix the policy's overrides"
                        .to_owned(),
                )
            })
    }
}

impl CredentialSource for TokenGrantSource {
    /// Without request context: only grants without overrides can answer.
    fn get(&self) -> GetFuture<'_> {
        Box::pin(async move {
            let key = self.key_for(None)?;
            self.client.token(key).await
        })
    }

    fn get_for<'a>(&'a self, target: &'a RequestTarget<'a>) -> GetFuture<'a> {
        Box::pin(self.token_for(target))
    }

    fn kind(&self) -> &'static str {
        "token_grant"
    }
}
