//! The chain itself: [`Authenticators`] (everything it reads) and
//! [`authenticate`], which tries them in the order the module docs of
//! [`crate::authn`] give.
//!
//! Must never: fall through to `Anonymous` for a credential nobody accepted,
//! or log a credential.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use palisade_api::{BOOTSTRAP_TOKEN_PREFIX, SANDBOX_TOKEN_TYP};
use sha2::{Digest, Sha256};

use super::admin_token::AdminToken;
use super::failure::{AuthFailure, STORE_ERROR};
use super::kube::{AUTHENTICATOR_KUBE, KubeAuthenticator};
use super::live_sandboxes::sandbox_exists;
use super::oidc::OidcAuthenticator;
use crate::metrics::Metrics;
use crate::principal::{BootstrapCredential, Principal, Role};
use crate::store::{BootstrapLookup, Store};
use crate::tokens::TokenService;

/// Everything the chain reads, built once at start-up.
#[derive(Debug)]
pub struct Authenticators {
    /// `--insecure-allow-anonymous`: whether a caller without a credential
    /// holds (non-admin) scopes.
    pub insecure_allow_anonymous: bool,
    /// The static admin token (`--admin-token-file`).
    pub admin_token: Option<AdminToken>,
    /// Kubernetes ServiceAccount tokens on `token:issue` (when configured).
    pub kube: Option<KubeAuthenticator>,
    /// OIDC user/platform tokens (when configured).
    pub oidc: Option<OidcAuthenticator>,
    /// Verifies sandbox JWTs (the handlers' minting service, shared).
    pub tokens: TokenService,
    /// Bootstrap tokens and the sandboxes that still exist.
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
}

/// What a verified sandbox JWT is bound to beyond its sandbox, put in the
/// request extensions next to its `Principal::Sandbox`: `pod_uid` is set
/// when the token descends from a Kubernetes ServiceAccount token (issued
/// by `token:issue`, then carried forward by every `token:refresh`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxTokenBinding {
    pub pod_uid: Option<String>,
}

/// Whether a JWT-shaped token declares our sandbox token type.
fn is_sandbox_jwt(token: &str) -> bool {
    token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .is_some_and(|h| h.get("typ").and_then(|t| t.as_str()) == Some(SANDBOX_TOKEN_TYP))
}

/// SHA-256 hex of a bootstrap token: its key in the store.
pub fn bootstrap_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Run the chain on one request's headers; `token_issue` is whether the
/// request is `POST /v1/token:issue` (the only route taking ServiceAccount
/// tokens). The binding is `Some` exactly for `Principal::Sandbox`.
pub async fn authenticate(
    state: &Authenticators,
    headers: &HeaderMap,
    token_issue: bool,
) -> Result<(Principal, Option<SandboxTokenBinding>), AuthFailure> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok((
            Principal::Anonymous {
                insecure_allowed: state.insecure_allow_anonymous,
            },
            None,
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            AuthFailure::new(
                "header",
                "malformed_header",
                "the Authorization header must be `Bearer <token>`",
            )
        })?;

    if let Some(admin) = &state.admin_token
        && admin.matches(token)
    {
        return Ok((
            Principal::User {
                subject: "admin".to_owned(),
                roles: vec![Role::Admin],
            },
            None,
        ));
    }

    if token.starts_with(BOOTSTRAP_TOKEN_PREFIX) {
        let hash = bootstrap_hash(token);
        let store = state.store.clone();
        let now = crate::fsutil::now();
        let h = hash.clone();
        let lookup = tokio::task::spawn_blocking(move || store.lookup_bootstrap(&h, now))
            .await
            .map_err(|_| {
                AuthFailure::new("bootstrap", STORE_ERROR, "the store is unavailable; retry")
            })?
            .map_err(|_| {
                state.metrics.store_errors.inc();
                AuthFailure::new("bootstrap", STORE_ERROR, "the store is unavailable; retry")
            })?;
        return match lookup {
            BootstrapLookup::Valid(rec) => Ok((
                Principal::Bootstrap {
                    sandbox_id: rec.sandbox_id,
                    credential: BootstrapCredential::OneTime { token_hash: hash },
                },
                None,
            )),
            BootstrapLookup::Expired => Err(AuthFailure::new(
                "bootstrap",
                "expired",
                "the bootstrap token has expired; create the sandbox again or ask an operator",
            )),
            BootstrapLookup::Unknown => Err(AuthFailure::new(
                "bootstrap",
                "unknown",
                "the bootstrap token is unknown or was already used",
            )),
        };
    }

    let jwt_shaped = token.bytes().filter(|b| *b == b'.').count() == 2;
    if token_issue && jwt_shaped && !is_sandbox_jwt(token) {
        let Some(kube) = &state.kube else {
            return Err(AuthFailure::new(
                AUTHENTICATOR_KUBE,
                "not_configured",
                "this gateway does not accept Kubernetes ServiceAccount tokens (start it with \
                 --sandbox-service-account and --sandbox-namespaces); use a bootstrap token",
            ));
        };
        let (sandbox_id, pod) = kube.authenticate(token, &state.store).await?;
        return Ok((
            Principal::Bootstrap {
                sandbox_id,
                credential: BootstrapCredential::ServiceAccount(pod),
            },
            None,
        ));
    }

    // A JWT that is not ours, with an OIDC issuer configured: a user or
    // platform token (its own refusal reasons under authenticator `oidc`).
    if jwt_shaped
        && let Some(oidc) = &state.oidc
        && !is_sandbox_jwt(token)
    {
        return oidc
            .authenticate(token, crate::fsutil::now())
            .await
            .map(|p| (p, None));
    }

    if jwt_shaped {
        let now = crate::fsutil::now();
        let (id, claims) = state
            .tokens
            .verify(token, now)
            .map_err(|e| AuthFailure::new("sandbox_jwt", e.as_str(), e.to_string()))?;
        // Deleting a sandbox revokes its tokens at once.
        let exists = sandbox_exists(&state.store, &id).await.map_err(|()| {
            state.metrics.store_errors.inc();
            AuthFailure::new(
                "sandbox_jwt",
                STORE_ERROR,
                "the store is unavailable; retry",
            )
        })?;
        if !exists {
            return Err(AuthFailure::new(
                "sandbox_jwt",
                "revoked",
                "the sandbox of this token no longer exists",
            ));
        }
        return Ok((
            Principal::Sandbox {
                id,
                jti: claims.jti,
            },
            Some(SandboxTokenBinding {
                pod_uid: claims.pod_uid,
            }),
        ));
    }

    Err(AuthFailure::new(
        "chain",
        "unrecognized",
        "the bearer credential is not recognised by any authenticator",
    ))
}
