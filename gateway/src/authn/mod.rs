//! The authentication chain: turns the `Authorization` header into a
//! [`Principal`] (or a 401), and the tower layer that runs it.
//!
//! Authenticators, tried in order on a bearer credential:
//! 1. the static admin token ([`admin_token`]) → `User{admin}`;
//! 2. a one-time bootstrap token (`pbt_…`, looked up by hash) → `Bootstrap`;
//! 3. on `POST /v1/token:issue` only: a JWT that is not ours (no
//!    `palisade-sandbox+jwt` typ) is a Kubernetes ServiceAccount token,
//!    reviewed by [`kube`] → `Bootstrap` carrying the pod identity;
//! 4. with an OIDC issuer configured, a JWT without our sandbox `typ`: an
//!    OIDC token ([`oidc`]) → `User{roles}` or `Platform{namespaces}`;
//! 5. a sandbox JWT ([`crate::tokens`]) whose sandbox still exists → `Sandbox`
//!    (plus a [`SandboxTokenBinding`] extension: the pod the token is bound
//!    to, which `token:refresh` carries forward). "Still exists" is a memory
//!    lookup ([`live_sandboxes`]) kept in step with the store.
//!
//! A ServiceAccount token on any other route reaches only step 4 and is
//! refused there (its `alg`/`typ` are not ours) without any TokenReview.
//!
//! No header → `Anonymous` (which holds scopes only under
//! `--insecure-allow-anonymous`). A credential that no authenticator accepts
//! is a 401 — never a fall-through to anonymous.
//! Must never: log a credential, or answer 5xx for a bad credential.

pub mod admin_token;
pub mod kube;
pub mod live_sandboxes;
pub mod oidc;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use palisade_api::{BOOTSTRAP_TOKEN_PREFIX, SANDBOX_TOKEN_TYP};
use sha2::{Digest, Sha256};

use tower::Layer;

use crate::http::{ApiError, HttpService, Next, Request};
use crate::principal::{BootstrapCredential, Principal, Role, SandboxId};
use crate::routes::RouteId;
use crate::state::AppState;
use crate::store::{BootstrapLookup, Store};

/// What a verified sandbox JWT is bound to beyond its sandbox, put in the
/// request extensions next to its `Principal::Sandbox`: `pod_uid` is set
/// when the token descends from a Kubernetes ServiceAccount token (issued
/// by `token:issue`, then carried forward by every `token:refresh`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxTokenBinding {
    pub pod_uid: Option<String>,
}

/// A refusal: which authenticator, a bounded reason label, the answer's
/// status (401 unless said otherwise) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub authenticator: &'static str,
    pub reason: &'static str,
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After` (429 answers).
    pub retry_after: Option<u64>,
}

impl AuthFailure {
    fn new(authenticator: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        let status = if reason == STORE_ERROR {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::UNAUTHORIZED
        };
        Self::with_status(authenticator, reason, status, message)
    }

    pub fn with_status(
        authenticator: &'static str,
        reason: &'static str,
        status: StatusCode,
        message: impl Into<String>,
    ) -> Self {
        Self {
            authenticator,
            reason,
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 429: too many attempts; retry after `seconds`.
    pub fn rate_limited(authenticator: &'static str, reason: &'static str, seconds: u64) -> Self {
        let mut f = Self::with_status(
            authenticator,
            reason,
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many token attempts; retry in {seconds}s"),
        );
        f.retry_after = Some(seconds);
        f
    }

    fn into_response(self) -> crate::http::Response {
        let error = match self.status {
            StatusCode::FORBIDDEN => ApiError::forbidden(self.message),
            // Not the caller's fault: 503 so that a sidecar retries instead
            // of throwing its credential away.
            StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable(self.message),
            StatusCode::TOO_MANY_REQUESTS => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", self.message)
            }
            _ => ApiError::unauthenticated(self.message),
        };
        let mut resp = error.into_response();
        if let Some(v) = self
            .retry_after
            .and_then(|s| http::HeaderValue::from_str(&s.to_string()).ok())
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Authenticator label of Kubernetes ServiceAccount tokens.
pub const AUTHENTICATOR_KUBE: &str = "kubernetes";

/// Whether a JWT-shaped token declares our sandbox token type.
fn is_sandbox_jwt(token: &str) -> bool {
    token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .is_some_and(|h| h.get("typ").and_then(|t| t.as_str()) == Some(SANDBOX_TOKEN_TYP))
}

/// Reason label when the store, not the credential, failed (answered 503).
pub const STORE_ERROR: &str = "store_error";

/// Whether sandbox `id` still exists: the store's memory index when it has
/// one (no blocking-thread hop: this runs on every sandbox-authenticated
/// request), else a store read on a blocking thread. `Err` when the store
/// failed.
pub async fn sandbox_exists(store: &Arc<dyn Store>, id: &SandboxId) -> Result<bool, ()> {
    if let Some(exists) = store.sandbox_exists_cached(id) {
        return Ok(exists);
    }
    let store = store.clone();
    let id = id.clone();
    tokio::task::spawn_blocking(move || store.get_sandbox(&id))
        .await
        .map_err(|_| ())?
        .map(|s| s.is_some())
        .map_err(|_| ())
}

/// SHA-256 hex of a bootstrap token: its key in the store.
pub fn bootstrap_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Run the chain on one request's headers; `token_issue` is whether the
/// request is `POST /v1/token:issue` (the only route taking ServiceAccount
/// tokens). The binding is `Some` exactly for `Principal::Sandbox`.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    token_issue: bool,
) -> Result<(Principal, Option<SandboxTokenBinding>), AuthFailure> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok((
            Principal::Anonymous {
                insecure_allowed: state.config.insecure_allow_anonymous,
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

/// The authentication layer: puts the [`Principal`] in request extensions.
pub fn layer(state: Arc<AppState>) -> impl Layer<HttpService, Service = HttpService> + Clone {
    crate::http::from_fn(move |mut req: Request, next: Next| {
        let state = state.clone();
        async move {
            let token_issue = crate::routes::route_of(&mut req)
                .as_ref()
                .as_ref()
                .is_ok_and(|m| m.route.id == RouteId::TokenIssue);
            match authenticate(&state, req.headers(), token_issue).await {
                Ok((principal, binding)) => {
                    tracing::Span::current().record("principal", principal.subject());
                    req.extensions_mut().insert(principal);
                    if let Some(binding) = binding {
                        req.extensions_mut().insert(binding);
                    }
                    next.run(req).await
                }
                Err(failure) => {
                    state
                        .metrics
                        .auth_failure(failure.authenticator, failure.reason);
                    tracing::info!(
                        authenticator = failure.authenticator,
                        reason = failure.reason,
                        "credential refused"
                    );
                    failure.into_response()
                }
            }
        }
    })
}
