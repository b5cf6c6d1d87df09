//! Sandbox registry: create (with a one-time bootstrap token, shown once),
//! get, list, delete (which revokes the sandbox's tokens at once).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use palisade_api::{BOOTSTRAP_TOKEN_PREFIX, CreatedSandbox, Sandbox, SandboxList, SandboxSpec};

use super::{Ctx, HandlerResult, valid_label};
use crate::http::{ApiError, Request, json, read_json};
use crate::principal::{Principal, SandboxId};
use crate::store::BootstrapRecord;

const MAX_LABELS: usize = 64;
const MAX_LABEL_VALUE: usize = 253;

fn validate(spec: &SandboxSpec, principal: &Principal) -> Result<(), ApiError> {
    let bad = |reason: String| Err(ApiError::bad_request("invalid_sandbox", reason));
    if !valid_label(&spec.name) {
        return bad(format!(
            "name `{}`: use 1-63 lowercase letters, digits and `-`",
            spec.name
        ));
    }
    for (field, value) in [
        ("namespace", &spec.namespace),
        ("serviceAccount", &spec.service_account),
        ("policy", &spec.policy),
    ] {
        if let Some(v) = value
            && !valid_label(v)
        {
            return bad(format!(
                "{field} `{v}`: use 1-63 lowercase letters, digits and `-`"
            ));
        }
    }
    if spec.labels.len() > MAX_LABELS {
        return bad(format!("at most {MAX_LABELS} labels"));
    }
    for (k, v) in &spec.labels {
        if k.is_empty() || k.len() > 63 || v.len() > MAX_LABEL_VALUE {
            return bad(format!(
                "label `{k}`: keys 1-63 characters, values at most 253"
            ));
        }
    }
    if !principal.sees_namespace(spec.namespace.as_deref()) {
        return Err(ApiError::forbidden(
            "you may create sandboxes only in your own namespaces",
        ));
    }
    Ok(())
}

/// Path `{id}` → a sandbox the caller may see, or the one 404.
pub async fn visible_sandbox(ctx: &Ctx) -> Result<Sandbox, ApiError> {
    let id = ctx
        .matched
        .params
        .id
        .as_deref()
        .and_then(SandboxId::parse)
        .ok_or_else(ApiError::sandbox_not_found)?;
    let sandbox = ctx
        .store(move |s| s.get_sandbox(&id))
        .await?
        .ok_or_else(ApiError::sandbox_not_found)?;
    if !ctx
        .principal
        .sees_namespace(sandbox.spec.namespace.as_deref())
    {
        return Err(ApiError::sandbox_not_found());
    }
    Ok(sandbox)
}

pub async fn create(ctx: &Ctx, req: Request) -> HandlerResult {
    let spec: SandboxSpec = read_json(req.into_body()).await?;
    validate(&spec, &ctx.principal)?;
    let now = crate::fsutil::now();
    let id = SandboxId::generate();
    let sandbox = Sandbox {
        id: id.to_string(),
        spec,
        owner: ctx.principal.subject(),
        created_at: now,
    };
    let token = format!(
        "{BOOTSTRAP_TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let record = BootstrapRecord {
        sandbox_id: id.clone(),
        expires_at: now + ctx.state.config.bootstrap_ttl.as_secs(),
    };
    let hash = crate::authn::bootstrap_hash(&token);
    let (stored, rec) = (sandbox.clone(), record.clone());
    ctx.store(move |s| s.create_sandbox(&stored, &hash, &rec))
        .await?;
    tracing::info!(sandbox = %id, by = %ctx.principal.subject(), "sandbox created");
    Ok(json(
        StatusCode::CREATED,
        &CreatedSandbox {
            sandbox,
            bootstrap_token: token,
            bootstrap_expires_at: record.expires_at,
        },
    ))
}

pub async fn get(ctx: &Ctx) -> HandlerResult {
    Ok(json(StatusCode::OK, &visible_sandbox(ctx).await?))
}

pub async fn list(ctx: &Ctx) -> HandlerResult {
    let mut sandboxes = ctx.store(|s| s.list_sandboxes()).await?;
    sandboxes.retain(|s| ctx.principal.sees_namespace(s.spec.namespace.as_deref()));
    sandboxes.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(json(StatusCode::OK, &SandboxList { sandboxes }))
}

pub async fn delete(ctx: &Ctx) -> HandlerResult {
    let sandbox = visible_sandbox(ctx).await?;
    let id = SandboxId::parse(&sandbox.id).ok_or_else(ApiError::sandbox_not_found)?;
    let doomed = id.clone();
    if !ctx.store(move |s| s.delete_sandbox(&doomed)).await? {
        return Err(ApiError::sandbox_not_found());
    }
    tracing::info!(sandbox = %id, by = %ctx.principal.subject(), "sandbox deleted");
    Ok(json(StatusCode::OK, &sandbox))
}
