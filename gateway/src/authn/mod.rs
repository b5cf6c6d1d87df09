//! The authentication chain: turns the `Authorization` header into a
//! [`Principal`](crate::principal::Principal) (or a 401), and the tower layer that runs it.
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
//!
//! Files: `chain` ([`Authenticators`], [`authenticate`]: the order above),
//! `failure` ([`AuthFailure`]), one module per authenticator with its
//! settings, and [`layer`]. The chain reads only [`Authenticators`], never
//! the whole gateway state.
//!
//! Must never: log a credential, or answer 5xx for a bad credential.

pub mod admin_token;
mod chain;
mod failure;
pub mod kube;
pub mod live_sandboxes;
pub mod oidc;

use std::sync::Arc;

use tower::Layer;

pub use chain::{Authenticators, SandboxTokenBinding, authenticate, bootstrap_hash};
pub use failure::{AuthFailure, STORE_ERROR};

use crate::http::{HttpService, Next, Request};
use crate::routes::RouteId;

/// The authentication layer: puts the [`Principal`](crate::principal::Principal) in
/// request extensions.
pub fn layer(state: Arc<Authenticators>) -> impl Layer<HttpService, Service = HttpService> + Clone {
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
