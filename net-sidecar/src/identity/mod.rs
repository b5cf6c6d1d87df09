//! The sandbox's identity and its link to the gateway (`run --gateway`).
//!
//! Owns: the gateway flags ([`settings`]), the HTTP client ([`client`]), the sandbox JWT
//! held in memory and kept fresh ([`jwt`], [`backoff`]), the session stream that delivers
//! policy, credentials and relay requests ([`session`]), relay dial-back to the agent shim
//! ([`relay`]), workload tokens ([`workload`]), the audit push ([`audit_push`]) and their
//! metrics ([`metrics`]).
//! Must never: write a token to disk or a log, fail open when the gateway is away (the last
//! good policy and unexpired credentials stay in force; nothing is ever replaced by
//! "allow"), or be reachable by the agent UID (everything here is outbound from UID 1337).

pub mod audit_push;
mod backoff;
mod client;
mod jwt;
mod metrics;
mod relay;
mod session;
mod settings;
mod workload;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use self::backoff::Backoff;
use self::client::GatewayClient;
use self::jwt::{GatewayIssuer, IdentityError, JwtStore};
use self::metrics::IdentityMetrics;
pub use self::settings::{GatewayFlags, GatewaySettings};
use crate::credentials::{DeliveredStore, GatewayCredentials};
use crate::policy::UpdateReceiver;

/// What the data plane gets from a started identity.
#[derive(Debug)]
pub struct Started {
    pub credentials: GatewayCredentials,
    /// Policy documents from the session, for `PolicySource::from_gateway`.
    pub policy_updates: UpdateReceiver,
}

/// Bootstrap the sandbox JWT (retrying while the gateway is unreachable), then start the
/// refresh loop, the session, and the audit pusher.
pub async fn start(
    settings: &GatewaySettings,
    registry: &prometheus::Registry,
    audit: Arc<audit_push::AuditBuffer>,
) -> anyhow::Result<Started> {
    let metrics = IdentityMetrics::register(registry, audit.dropped.clone())
        .context("cannot register the gateway metrics")?;
    let client = GatewayClient::new(settings)?;
    let jwt = Arc::new(
        JwtStore::new(
            Arc::new(GatewayIssuer(client.clone())),
            &settings.bootstrap,
            metrics.clone(),
        )
        .context("cannot start the sandbox identity")?,
    );
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match jwt.get().await {
            Ok(_) => break,
            Err(e @ (IdentityError::BootstrapSpent | IdentityError::TokenFile { .. })) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot bootstrap the sandbox identity with the gateway at {}",
                    settings.base
                )));
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(gateway = %settings.base, error = %e, retry_in = ?delay,
                    "cannot get a sandbox JWT yet; retrying (not ready)");
                tokio::time::sleep(delay).await;
            }
        }
    }
    tokio::spawn(jwt.clone().maintain());

    // Credentials are served only while the identity is valid.
    let (validity_tx, validity_rx) = watch::channel(jwt.current().map(|j| j.valid_until));
    let mut jwt_rx = jwt.subscribe();
    tokio::spawn(async move {
        while jwt_rx.changed().await.is_ok() {
            let until = jwt_rx.borrow().as_ref().map(|j| j.valid_until);
            validity_tx.send_replace(until);
        }
    });
    let delivered = Arc::new(DeliveredStore::new(validity_rx));
    let (policy_tx, policy_rx) = crate::policy::feed();
    let ctx = Arc::new(session::SessionCtx {
        client: client.clone(),
        sandbox: settings.sandbox_id.clone(),
        jwt: jwt.clone(),
        policy: policy_tx,
        delivered: delivered.clone(),
        shim_socket: settings.shim_socket.clone(),
        metrics: metrics.clone(),
    });
    tokio::spawn(session::run(ctx));
    tokio::spawn(audit_push::push_loop(
        audit,
        client.clone(),
        settings.sandbox_id.clone(),
        jwt.clone(),
        metrics.audit_pushed.clone(),
    ));
    let workload = Arc::new(workload::GatewayWorkloadTokens {
        client,
        sandbox: settings.sandbox_id.clone(),
        jwt,
        metrics,
    });
    Ok(Started {
        credentials: GatewayCredentials {
            delivered,
            workload,
        },
        policy_updates: policy_rx,
    })
}
