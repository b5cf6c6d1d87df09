//! The router and the handlers. Handlers see the [`Principal`] and the
//! [`Matched`] route in extensions, never the credential.
//! Must never: answer differently for a missing and a foreign sandbox.

mod ctx;
mod events;
mod keys;
mod policies;
mod relay;
mod sandboxes;
mod secrets;
mod session;
mod tokens;
mod wellknown;

use std::sync::Arc;

use crate::http::{ApiError, HttpService, Request, service};
use crate::principal::Principal;
use crate::routes::{Matched, RouteId};
use crate::state::AppState;
use ctx::Ctx;

/// The innermost service: dispatch on the route the authz layer matched.
pub fn router(state: Arc<AppState>) -> HttpService {
    service(move |req: Request| {
        let state = state.clone();
        async move {
            let (Some(matched), Some(principal)) = (
                req.extensions().get::<Matched>().cloned(),
                req.extensions().get::<Principal>().cloned(),
            ) else {
                return ApiError::internal("route or principal missing: stack misbuilt")
                    .into_response();
            };
            let ctx = Ctx {
                state,
                principal,
                matched,
            };
            let result = match ctx.matched.route.id {
                RouteId::Jwks => wellknown::jwks(&ctx),
                RouteId::OpenIdConfiguration => wellknown::openid_configuration(&ctx),
                RouteId::OpenApi => Ok(crate::http::json(
                    http::StatusCode::OK,
                    &crate::openapi::document(),
                )),
                RouteId::SandboxCreate => sandboxes::create(&ctx, req).await,
                RouteId::SandboxList => sandboxes::list(&ctx).await,
                RouteId::SandboxGet => sandboxes::get(&ctx).await,
                RouteId::SandboxDelete => sandboxes::delete(&ctx).await,
                RouteId::SandboxPolicyGet => policies::for_sandbox(&ctx, req).await,
                RouteId::SandboxEvents => events::ingest(&ctx, req).await,
                RouteId::SandboxLogs => sandboxes::logs(&ctx, req).await,
                RouteId::WorkloadTokens => tokens::workload(&ctx, req).await,
                RouteId::PolicyPut => policies::put(&ctx, req).await,
                RouteId::PolicyGet => policies::get(&ctx).await,
                RouteId::TokenIssue => tokens::issue(&ctx).await,
                RouteId::TokenRefresh => tokens::refresh(&ctx, &req),
                RouteId::KeysList => keys::list(&ctx),
                RouteId::KeysRotate => keys::rotate(&ctx).await,
                RouteId::SandboxSession => session::open(&ctx).await,
                RouteId::SandboxExec => relay::exec(&ctx, req).await,
                RouteId::RelayDialBack => relay::dial_back(&ctx, req).await,
                RouteId::SecretPut => secrets::put(&ctx, req).await,
                RouteId::SecretList => secrets::list(&ctx).await,
                RouteId::SecretDelete => secrets::delete(&ctx).await,
            };
            result.unwrap_or_else(ApiError::into_response)
        }
    })
}
