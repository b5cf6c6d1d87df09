//! Workload tokens from the gateway: `POST /v1/sandboxes/{id}/workload-tokens` with the
//! sandbox JWT. Caching and single-flight live in `credentials::workload`.
//! Must never: log a token.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use palisade_api::{WorkloadTokenRequest, WorkloadTokenResponse};

use super::client::GatewayClient;
use super::jwt::JwtStore;
use super::metrics::IdentityMetrics;
use super::settings::SandboxId;
use crate::credentials::{CredentialError, FetchFuture, Secret, WorkloadTokens};

#[derive(Debug)]
pub struct GatewayWorkloadTokens {
    pub client: GatewayClient,
    pub sandbox: SandboxId,
    pub jwt: Arc<JwtStore>,
    pub metrics: IdentityMetrics,
}

impl GatewayWorkloadTokens {
    async fn fetch_once(&self, audience: &str) -> Result<(Secret, Duration), CredentialError> {
        let unavailable = |e: String| CredentialError::Unreadable(format!("workload token: {e}"));
        let body = serde_json::to_vec(&WorkloadTokenRequest {
            audience: audience.to_owned(),
        })
        .map_err(|e| unavailable(e.to_string()))?;
        let path = format!("/v1/sandboxes/{}/workload-tokens", self.sandbox);
        let mut retried = false;
        loop {
            let jwt = self
                .jwt
                .get()
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let req = self
                .client
                .request(
                    Method::POST,
                    &path,
                    jwt.expose(),
                    Some(Bytes::from(body.clone())),
                )
                .map_err(|e| unavailable(e.to_string()))?;
            match self.client.call::<WorkloadTokenResponse>(req).await {
                Ok(resp) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let lifetime = Duration::from_secs(resp.expires_at.saturating_sub(now).max(1));
                    let token = Secret::new(&resp.token)?;
                    tracing::info!(audience, kid = %resp.kid, fingerprint = %token.fingerprint(),
                        exp = resp.expires_at, "workload token minted");
                    return Ok((token, lifetime));
                }
                Err(e) if e.is_unauthorized() && !retried => {
                    retried = true;
                    let _ = self.jwt.renew(jwt.generation).await;
                }
                Err(e) => return Err(unavailable(e.to_string())),
            }
        }
    }
}

impl WorkloadTokens for GatewayWorkloadTokens {
    fn fetch<'a>(&'a self, audience: &'a str) -> FetchFuture<'a> {
        Box::pin(self.fetch_once(audience))
    }
    fn count(&self, outcome: &'static str) {
        self.metrics
            .workload_tokens
            .with_label_values(&[outcome])
            .inc();
    }
}
