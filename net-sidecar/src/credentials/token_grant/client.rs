//! The shared token-grant client: configuration, the cache, and one exchange (SVID fetch +
//! token endpoint call) run as a detached task per cache key so concurrent callers — and
//! callers whose request was cancelled — all get the one result.

use std::num::NonZeroUsize;

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::model::GrantType;

use super::cache::{Lookup, TokenCache};
use super::metrics::TokenGrantMetrics;
use super::oauth::{self, Endpoint, GrantError};
use super::{TokenKey, svid};
use crate::credentials::{CredentialError, Secret};

/// TCP connect + TLS handshake to the token endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole exchange: SVID fetch, connect, request, response body.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest token endpoint response body read.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Tokens cached at most (LRU beyond).
pub const DEFAULT_CACHE_CAPACITY: usize = 256;
/// A token is cached at most this long, whatever `expires_in` says.
pub const DEFAULT_TTL_CAP: Duration = Duration::from_secs(3600);
/// Cached tokens are dropped this long before they expire.
pub const DEFAULT_TTL_SKEW: Duration = Duration::from_secs(30);
/// Lifetime assumed when the endpoint sends no `expires_in`.
pub const DEFAULT_TTL_WITHOUT_EXPIRES_IN: Duration = Duration::from_secs(60);

/// Settings of the shared client. `Default` gives the constants above and the Workload API
/// socket from `SPIFFE_ENDPOINT_SOCKET`.
#[derive(Debug, Clone)]
pub struct TokenGrantConfig {
    /// The SPIFFE Workload API: a socket path or a `unix:` URI (`--spiffe-endpoint-socket`,
    /// else `SPIFFE_ENDPOINT_SOCKET`). `None`: grants fail with an error saying so.
    pub workload_api: Option<String>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub cache_capacity: NonZeroUsize,
    pub ttl_cap: Duration,
    pub ttl_skew: Duration,
    pub ttl_without_expires_in: Duration,
}

impl Default for TokenGrantConfig {
    fn default() -> Self {
        Self {
            workload_api: std::env::var("SPIFFE_ENDPOINT_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            cache_capacity: NonZeroUsize::new(DEFAULT_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN),
            ttl_cap: DEFAULT_TTL_CAP,
            ttl_skew: DEFAULT_TTL_SKEW,
            ttl_without_expires_in: DEFAULT_TTL_WITHOUT_EXPIRES_IN,
        }
    }
}

impl TokenGrantConfig {
    /// Use this Workload API socket (a path or `unix:` URI) instead of the environment's.
    #[cfg(test)]
    pub fn with_workload_api(mut self, socket: impl Into<std::path::PathBuf>) -> Self {
        self.workload_api = Some(socket.into().to_string_lossy().into_owned());
        self
    }
}

/// The shared part of every [`super::TokenGrantSource`]: Workload API location, TLS trust,
/// timeouts and the token cache. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenGrantClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: TokenGrantConfig,
    tls: Arc<rustls::ClientConfig>,
    cache: TokenCache,
    metrics: TokenGrantMetrics,
}

impl TokenGrantClient {
    /// `tls` verifies token endpoints: pass the sidecar's upstream client config (webpki +
    /// system roots + `--upstream-ca`).
    pub fn new(
        config: TokenGrantConfig,
        tls: Arc<rustls::ClientConfig>,
        metrics: TokenGrantMetrics,
    ) -> Self {
        let cache = TokenCache::new(config.cache_capacity);
        Self {
            inner: Arc::new(Inner {
                config,
                tls,
                cache,
                metrics,
            }),
        }
    }

    #[cfg(test)]
    pub fn metrics(&self) -> &TokenGrantMetrics {
        &self.inner.metrics
    }

    #[cfg(test)]
    pub(super) fn inner_cache_len(&self) -> usize {
        self.inner.cache.len()
    }

    /// The token for `key`: cached, joined from an exchange in flight, or exchanged now.
    pub(super) async fn token(&self, key: &TokenKey) -> Result<Secret, CredentialError> {
        let mut rx = match self.inner.cache.lookup(key) {
            Lookup::Hit(secret) => {
                self.inner.metrics.cache("hit");
                return Ok(secret);
            }
            Lookup::Shared(rx) => {
                self.inner.metrics.cache("shared");
                rx
            }
            Lookup::Lead(tx, rx) => {
                self.inner.metrics.cache("miss");
                let inner = self.inner.clone();
                let key = key.clone();
                // Detached: the exchange finishes (bounded by the total timeout) even when the
                // request that started it goes away, and every waiter gets its result.
                tokio::spawn(async move {
                    let result = inner.exchange(&key).await;
                    let stored = match &result {
                        Ok((secret, ttl)) if !ttl.is_zero() => {
                            Some((secret.clone(), Instant::now() + *ttl))
                        }
                        _ => None,
                    };
                    inner.cache.finish(&key, stored);
                    tx.send_replace(Some(result.map(|(secret, _)| secret)));
                });
                rx
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(outcome) => match &*outcome {
                Some(result) => result.clone(),
                None => Err(lost()),
            },
            Err(_) => Err(lost()),
        }
    }
}

fn lost() -> CredentialError {
    CredentialError::Unreadable(
        "the token grant exchange ended without a result (the sidecar is shutting down?)"
            .to_owned(),
    )
}

fn grant_label(grant: GrantType) -> &'static str {
    match grant {
        GrantType::ClientCredentials => "client_credentials",
        GrantType::TokenExchange => "token_exchange",
    }
}

impl Inner {
    /// One exchange: the token and how long to cache it.
    async fn exchange(&self, key: &TokenKey) -> Result<(Secret, Duration), CredentialError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.config.timeout, self.exchange_inner(key))
            .await
            .unwrap_or_else(|_| {
                Err(GrantError::new(
                    "timeout",
                    format!(
                        "no answer within {:?} (SVID fetch + token endpoint); check that the \
                         token endpoint is reachable from the sidecar",
                        self.config.timeout
                    ),
                ))
            });
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome,
        };
        self.metrics.exchange(
            grant_label(key.grant),
            outcome,
            started.elapsed().as_secs_f64(),
        );
        let endpoint_label = oauth::display_endpoint(&key.endpoint);
        match result {
            Ok(token) => {
                tracing::info!(
                    grant = grant_label(key.grant),
                    endpoint = %endpoint_label,
                    fingerprint = %token.secret.fingerprint(),
                    expires_in_seconds = token.lifetime.map(|d| d.as_secs()),
                    "token grant exchanged"
                );
                let lifetime = token.lifetime.unwrap_or(self.config.ttl_without_expires_in);
                let ttl = lifetime
                    .min(self.config.ttl_cap)
                    .saturating_sub(self.config.ttl_skew);
                Ok((token.secret, ttl))
            }
            Err(e) => {
                tracing::warn!(
                    grant = grant_label(key.grant),
                    endpoint = %endpoint_label,
                    outcome = e.outcome,
                    error = %e.message,
                    "token grant failed"
                );
                Err(CredentialError::Unreadable(format!(
                    "token grant at {endpoint_label}: {}",
                    e.message
                )))
            }
        }
    }

    async fn exchange_inner(&self, key: &TokenKey) -> Result<oauth::Token, GrantError> {
        let endpoint = Endpoint::parse(&key.endpoint)?;
        let socket = self.config.workload_api.as_deref().ok_or_else(|| {
            GrantError::new(
                "svid",
                "no SPIFFE Workload API socket is configured; mount the SPIRE agent socket \
                 into the sidecar and set --spiffe-endpoint-socket or SPIFFE_ENDPOINT_SOCKET"
                    .to_owned(),
            )
        })?;
        let svid = svid::fetch(socket, &key.svid_audience).await?;
        let form = oauth::form(key, &svid);
        oauth::post(
            &endpoint,
            form,
            &svid,
            &self.tls,
            self.config.connect_timeout,
            self.config.max_response_bytes,
        )
        .await
    }
}
