//! Sandbox registry: create (with a one-time bootstrap token, shown once),
//! get, list, delete (which revokes the sandbox's tokens at once), and —
//! when a driver is configured (`palisade up`) — start and stop the
//! sandbox's runtime and serve its logs.
//!
//! With a driver the bootstrap token goes to the sandbox's sidecar only; the
//! create answer then carries an empty `bootstrapToken`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use palisade_api::{BOOTSTRAP_TOKEN_PREFIX, CreatedSandbox, Sandbox, SandboxList, SandboxSpec};

use std::sync::Arc;

use super::ctx::{Ctx, HandlerResult};
use crate::driver::{Driver, DriverError, Launch};
use crate::http::{ApiError, Request, json, read_json};
use crate::principal::{Principal, SandboxId, valid_label};
use crate::routes::{Route, authorize_namespace};
use crate::store::{BootstrapRecord, policy_usable_by};

const MAX_LABELS: usize = 64;
const MAX_LABEL_VALUE: usize = 253;
/// Longest agent command line (arguments and bytes in total).
const MAX_COMMAND_ARGS: usize = 256;
const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Response header: the offset to ask for next (`?after=`).
pub const LOG_NEXT_HEADER: &str = "palisade-log-next";
/// Response header, once the agent has ended: how (`exited with status 0`).
pub const LOG_AGENT_EXIT_HEADER: &str = "palisade-agent-exit";

fn validate(spec: &SandboxSpec, route: &Route, principal: &Principal) -> Result<(), ApiError> {
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
    if spec.command.len() > MAX_COMMAND_ARGS
        || spec.command.iter().map(String::len).sum::<usize>() > MAX_COMMAND_BYTES
        || spec.command.iter().any(|a| a.contains('\0'))
    {
        return bad(format!(
            "command: at most {MAX_COMMAND_ARGS} arguments and {MAX_COMMAND_BYTES} bytes, no NUL"
        ));
    }
    if spec.command.first().is_some_and(String::is_empty) {
        return bad("command: the program name must not be empty".to_owned());
    }
    if !authorize_namespace(route, principal, spec.namespace.as_deref()) {
        return Err(ApiError::forbidden(
            "you may create sandboxes only in your own namespaces",
        ));
    }
    Ok(())
}

/// A sandbox may name only a policy of its own namespace or a cluster-wide
/// one; a policy that does not exist yet is checked when it is served.
async fn check_policy_usable(ctx: &Ctx, spec: &SandboxSpec) -> Result<(), ApiError> {
    let Some(name) = spec.policy.clone() else {
        return Ok(());
    };
    let lookup = name.clone();
    let Some(policy) = ctx.store(move |s| s.get_policy(&lookup)).await? else {
        return Ok(());
    };
    if policy_usable_by(policy.namespace.as_deref(), spec.namespace.as_deref()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "policy_not_usable",
        format!(
            "policy `{name}` is neither cluster-wide nor of the sandbox's namespace{}; a sandbox \
             runs only a policy of its own namespace or a cluster-wide one",
            match &spec.namespace {
                Some(ns) => format!(" (`{ns}`)"),
                None => " (it has none)".to_owned(),
            }
        ),
    ))
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
    if !authorize_namespace(
        ctx.matched.route,
        &ctx.principal,
        sandbox.spec.namespace.as_deref(),
    ) {
        return Err(ApiError::sandbox_not_found());
    }
    Ok(sandbox)
}

pub async fn create(ctx: &Ctx, req: Request) -> HandlerResult {
    let spec: SandboxSpec = read_json(req.into_body()).await?;
    validate(&spec, ctx.matched.route, &ctx.principal)?;
    check_policy_usable(ctx, &spec).await?;
    let now = crate::fsutil::now();
    let id = SandboxId::generate();
    let sandbox = Sandbox {
        id: id.clone(),
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
    let bootstrap_token = match ctx.state.driver.clone() {
        None => token,
        Some(driver) => {
            start_runtime(ctx, driver, &sandbox, token).await?;
            String::new()
        }
    };
    Ok(json(
        StatusCode::CREATED,
        &CreatedSandbox {
            sandbox,
            bootstrap_token,
            bootstrap_expires_at: record.expires_at,
        },
    ))
}

/// Start the sandbox's runtime; on failure unregister it again.
async fn start_runtime(
    ctx: &Ctx,
    driver: Arc<dyn Driver>,
    sandbox: &Sandbox,
    token: String,
) -> Result<(), ApiError> {
    let policy = match sandbox.spec.policy.clone() {
        Some(name) => ctx
            .store(move |s| s.get_policy(&name))
            .await?
            .filter(|p| policy_usable_by(p.namespace.as_deref(), sandbox.spec.namespace.as_deref()))
            .map(|p| p.document),
        None => None,
    };
    let owned = sandbox.clone();
    let started = tokio::task::spawn_blocking(move || {
        driver.create(&Launch {
            sandbox: &owned,
            bootstrap_token: &token,
            policy: policy.as_deref(),
        })
    })
    .await;
    let err = match started {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the driver task panicked".to_owned(),
    };
    tracing::error!(sandbox = %sandbox.id, error = %err, "cannot start the sandbox");
    let id = sandbox.id.clone();
    ctx.store(move |s| s.delete_sandbox(&id)).await?;
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "sandbox_start_failed",
        format!("cannot start the sandbox (it was not registered): {err}"),
    ))
}

pub async fn get(ctx: &Ctx) -> HandlerResult {
    Ok(json(StatusCode::OK, &visible_sandbox(ctx).await?))
}

pub async fn list(ctx: &Ctx) -> HandlerResult {
    let mut sandboxes = ctx.store(|s| s.list_sandboxes()).await?;
    sandboxes.retain(|s| {
        authorize_namespace(
            ctx.matched.route,
            &ctx.principal,
            s.spec.namespace.as_deref(),
        )
    });
    sandboxes.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(json(StatusCode::OK, &SandboxList { sandboxes }))
}

pub async fn delete(ctx: &Ctx) -> HandlerResult {
    let sandbox = visible_sandbox(ctx).await?;
    let id = sandbox.id.clone();
    let doomed = id.clone();
    if !ctx.store(move |s| s.delete_sandbox(&doomed)).await? {
        return Err(ApiError::sandbox_not_found());
    }
    // Its sidecar's session streams end now (and its waiting relays).
    ctx.state.sessions.end_sandbox(&id);
    tracing::info!(sandbox = %id, by = %ctx.principal.subject(), "sandbox deleted");
    if let Some(driver) = ctx.state.driver.clone() {
        let doomed = id.clone();
        let stopped = tokio::task::spawn_blocking(move || driver.delete(&doomed)).await;
        let err = match stopped {
            Ok(Ok(()) | Err(DriverError::NotRunning(_))) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("the driver task panicked".to_owned()),
        };
        if let Some(err) = err {
            tracing::error!(sandbox = %id, error = %err, "cannot remove the sandbox's runtime");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "sandbox_cleanup_failed",
                format!(
                    "the sandbox was unregistered (its tokens are dead) but its runtime was not \
                     fully removed: {err}; stopping `palisade up` retries the cleanup"
                ),
            ));
        }
    }
    Ok(json(StatusCode::OK, &sandbox))
}

/// `GET /v1/sandboxes/{id}/logs?after=N`: the runtime's log from byte N on
/// (text/plain), the next offset in `palisade-log-next`, and once the agent
/// ended, how, in `palisade-agent-exit`.
pub async fn logs(ctx: &Ctx, req: Request) -> HandlerResult {
    let sandbox = visible_sandbox(ctx).await?;
    let id = sandbox.id.clone();
    let after = match req.uri().query() {
        None => 0,
        Some(q) => parse_after(q).ok_or_else(|| {
            ApiError::bad_request("invalid_query", "use ?after=N with N a byte offset")
        })?,
    };
    let Some(driver) = ctx.state.driver.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_driver",
            "this gateway runs no sandbox driver, so it keeps no logs (use `palisade up`)",
        ));
    };
    let chunk = tokio::task::spawn_blocking(move || driver.logs(&id, after))
        .await
        .map_err(|_| ApiError::internal("the driver task panicked"))?
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    let mut builder = http::Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(LOG_NEXT_HEADER, chunk.next.to_string());
    if let Some(how) = &chunk.agent_exit {
        builder = builder.header(LOG_AGENT_EXIT_HEADER, how.as_str());
    }
    builder
        .body(crate::http::boxed(http_body_util::Full::new(
            bytes::Bytes::from(chunk.text),
        )))
        .map_err(|e| ApiError::internal(format!("cannot build the answer: {e}")))
}

fn parse_after(query: &str) -> Option<u64> {
    let mut after = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("after", v)) => after = v.parse().ok()?,
            _ => return None,
        }
    }
    Some(after)
}
