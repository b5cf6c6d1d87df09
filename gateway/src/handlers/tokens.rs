//! `POST /v1/token:issue` (one-time bootstrap token, or a reviewed
//! Kubernetes ServiceAccount token → sandbox JWT; the latter bound to the
//! pod by a `pod_uid` claim) and `POST /v1/token:refresh` (sandbox JWT → new
//! sandbox JWT, new `jti`, the same `pod_uid` binding or none).

use http::StatusCode;
use palisade_api::{TokenResponse, WorkloadTokenRequest, WorkloadTokenResponse};
use palisade_policy::model::CredentialSource;

use super::ctx::{Ctx, HandlerResult};
use crate::authn::SandboxTokenBinding;
use crate::http::{ApiError, json};
use crate::principal::{BootstrapCredential, Principal, SandboxId};

/// A sandbox JWT for `id`, bound to the pod `pod_uid` when given.
fn answer(ctx: &Ctx, id: &SandboxId, pod_uid: Option<String>) -> HandlerResult {
    let minted = ctx
        .state
        .tokens
        .mint_bound(id, pod_uid, crate::fsutil::now())
        .map_err(|e| ApiError::internal(format!("cannot sign a token: {e}")))?;
    Ok(json(
        StatusCode::OK,
        &TokenResponse {
            token: minted.token,
            token_type: "Bearer".to_owned(),
            sandbox_id: id.clone(),
            expires_at: minted.claims.exp,
            kid: minted.kid,
        },
    ))
}

/// Whether the sandbox still exists (memory index; see `authn::live_sandboxes`).
async fn exists(ctx: &Ctx, id: &SandboxId) -> Result<bool, ApiError> {
    crate::authn::live_sandboxes::sandbox_exists(&ctx.state.store, id)
        .await
        .map_err(|()| {
            ctx.state.metrics.store_errors.inc();
            ApiError::unavailable("the gateway store failed; retry, and see the gateway log")
        })
}

pub async fn issue(ctx: &Ctx) -> HandlerResult {
    let Principal::Bootstrap {
        sandbox_id,
        credential,
    } = &ctx.principal
    else {
        return Err(ApiError::forbidden(
            "POST /v1/token:issue needs a bootstrap token",
        ));
    };
    let token_hash = match credential {
        BootstrapCredential::OneTime { token_hash } => token_hash,
        BootstrapCredential::ServiceAccount(pod) => {
            // The authenticator checked the record; check again right before
            // minting so that a sandbox deleted meanwhile gets no token.
            if !exists(ctx, sandbox_id).await? {
                ctx.state
                    .metrics
                    .auth_failure(crate::authn::kube::AUTHENTICATOR_KUBE, "unknown_sandbox");
                return Err(ApiError::forbidden("the pod's sandbox no longer exists"));
            }
            let resp = answer(ctx, sandbox_id, Some(pod.uid.clone()))?;
            ctx.state.metrics.tokens_issued.inc();
            tracing::info!(
                sandbox = %sandbox_id,
                namespace = %pod.namespace,
                pod = %pod.name,
                "sandbox token issued for a ServiceAccount token"
            );
            return Ok(resp);
        }
    };
    let hash = token_hash.clone();
    let now = crate::fsutil::now();
    // Consume atomically: of two racing requests exactly one gets a token.
    let consumed = ctx.store(move |s| s.consume_bootstrap(&hash, now)).await?;
    let Some(id) = consumed else {
        ctx.state.metrics.auth_failure("bootstrap", "replayed");
        return Err(ApiError::unauthenticated(
            "the bootstrap token is unknown or was already used",
        ));
    };
    if !exists(ctx, &id).await? {
        return Err(ApiError::sandbox_not_found());
    }
    let resp = answer(ctx, &id, None)?;
    ctx.state.metrics.tokens_issued.inc();
    tracing::info!(sandbox = %id, "sandbox token issued");
    Ok(resp)
}

pub fn refresh(ctx: &Ctx, req: &crate::http::Request) -> HandlerResult {
    let Principal::Sandbox { id, .. } = &ctx.principal else {
        return Err(ApiError::forbidden(
            "POST /v1/token:refresh needs a sandbox token",
        ));
    };
    // The authentication layer checked that the sandbox exists, and put the
    // presented token's pod binding beside the principal: carry it forward
    // unchanged (a missing binding is a misbuilt stack, never "unbound").
    let binding = req
        .extensions()
        .get::<SandboxTokenBinding>()
        .ok_or_else(|| ApiError::internal("token binding missing: stack misbuilt"))?;
    let resp = answer(ctx, id, binding.pod_uid.clone())?;
    ctx.state.metrics.tokens_refreshed.inc();
    Ok(resp)
}

/// `POST /v1/sandboxes/{id}/workload-tokens`: a short-lived JWT for one
/// upstream audience that the sandbox's own policy names in a
/// `workloadToken` credential; anything else is 403.
pub async fn workload(ctx: &Ctx, req: crate::http::Request) -> HandlerResult {
    let Principal::Sandbox { id, .. } = &ctx.principal else {
        return Err(ApiError::sandbox_not_found());
    };
    let request: WorkloadTokenRequest = crate::http::read_json(req.into_body()).await?;
    let lookup = id.clone();
    let sandbox = ctx
        .store(move |s| s.get_sandbox(&lookup))
        .await?
        .ok_or_else(ApiError::sandbox_not_found)?;
    let refuse = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "audience_not_allowed",
            "the sandbox's policy has no workloadToken credential for this audience",
        )
    };
    let name = sandbox.spec.policy.ok_or_else(refuse)?;
    let stored = ctx
        .store(move |s| s.get_policy(&name))
        .await?
        .filter(|p| {
            crate::store::policy_usable_by(
                p.namespace.as_deref(),
                sandbox.spec.namespace.as_deref(),
            )
        })
        .ok_or_else(refuse)?;
    // Stored policies were validated on write; re-parse the exact revision.
    let policy = palisade_policy::parse_policy(stored.document.as_bytes())
        .map_err(|_| ApiError::internal("a stored policy no longer parses"))?;
    let allowed = policy.spec.credentials.values().any(|c| {
        matches!(&c.from, CredentialSource::WorkloadToken { audience } if *audience == request.audience)
    });
    if !allowed {
        return Err(refuse());
    }
    let (token, claims, kid) = ctx
        .state
        .tokens
        .mint_workload(id, &request.audience, crate::fsutil::now())
        .map_err(|e| ApiError::internal(format!("cannot sign a token: {e}")))?;
    ctx.state.metrics.workload_tokens.inc();
    Ok(json(
        StatusCode::OK,
        &WorkloadTokenResponse {
            token,
            audience: claims.aud,
            expires_at: claims.exp,
            kid,
        },
    ))
}
