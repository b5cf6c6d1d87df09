//! `from: {workloadToken: {audience}}`: an audience-bound JWT minted by the gateway.
//!
//! Owns: the per-audience cache (reused until ~80 % of the token's lifetime, served until
//! expiry if a renewal fails), single-flight renewal, and the [`WorkloadTokens`] trait the
//! gateway client implements.
//! Must never: forward a request without its token (every failure is a 502), or log a token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{CredentialError, CredentialSource, GetFuture, Secret};

/// Boxed future of [`WorkloadTokens::fetch`]: the token and its lifetime.
pub type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(Secret, Duration), CredentialError>> + Send + 'a>>;

/// Who mints workload tokens (the gateway, with the sandbox JWT).
pub trait WorkloadTokens: Send + Sync + std::fmt::Debug {
    fn fetch<'a>(&'a self, audience: &'a str) -> FetchFuture<'a>;
    /// Count a lookup (`fetched`, `cached`, `failed`).
    fn count(&self, _outcome: &'static str) {}
}

#[derive(Debug, Clone)]
struct Cached {
    token: Secret,
    renew_at: Instant,
    expires: Instant,
}

/// The source for one audience.
#[derive(Debug)]
pub struct WorkloadTokenSource {
    audience: String,
    minter: Arc<dyn WorkloadTokens>,
    cache: Mutex<Option<Cached>>,
    flight: tokio::sync::Mutex<()>,
}

impl WorkloadTokenSource {
    pub fn new(audience: &str, minter: Arc<dyn WorkloadTokens>) -> Self {
        Self {
            audience: audience.to_owned(),
            minter,
            cache: Mutex::new(None),
            flight: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<Cached> {
        self.cache.lock().clone()
    }

    async fn token(&self) -> Result<Secret, CredentialError> {
        if let Some(c) = self.cached()
            && Instant::now() < c.renew_at
        {
            self.minter.count("cached");
            return Ok(c.token);
        }
        let _flight = self.flight.lock().await;
        // Someone else may have renewed while we waited.
        if let Some(c) = self.cached()
            && Instant::now() < c.renew_at
        {
            self.minter.count("cached");
            return Ok(c.token);
        }
        match self.minter.fetch(&self.audience).await {
            Ok((token, lifetime)) => {
                let now = Instant::now();
                let fresh = Cached {
                    token: token.clone(),
                    renew_at: now + lifetime.mul_f64(0.8),
                    expires: now + lifetime,
                };
                *self.cache.lock() = Some(fresh);
                self.minter.count("fetched");
                Ok(token)
            }
            Err(err) => match self.cached() {
                // Still valid: keep using it (the gateway may be restarting).
                Some(c) if Instant::now() < c.expires => {
                    tracing::warn!(audience = %self.audience, error = %err,
                        "cannot renew a workload token; using the unexpired one");
                    self.minter.count("cached");
                    Ok(c.token)
                }
                _ => {
                    self.minter.count("failed");
                    Err(err)
                }
            },
        }
    }
}

impl CredentialSource for WorkloadTokenSource {
    fn get(&self) -> GetFuture<'_> {
        Box::pin(self.token())
    }
    fn kind(&self) -> &'static str {
        "workload_token"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Minter {
        calls: AtomicUsize,
        down: AtomicBool,
    }

    impl WorkloadTokens for Minter {
        fn fetch<'a>(&'a self, audience: &'a str) -> FetchFuture<'a> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if self.down.load(Ordering::SeqCst) {
                    return Err(CredentialError::Unreadable("gateway down".into()));
                }
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                Ok((
                    Secret::new(&format!("{audience}.{n}")).unwrap(),
                    Duration::from_secs(100),
                ))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cached_single_flight_and_fail_closed_after_expiry() {
        let m = Arc::new(Minter::default());
        let s = Arc::new(WorkloadTokenSource::new("aud", m.clone()));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.get().await.unwrap().expose().to_owned() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "aud.0");
        }
        assert_eq!(m.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(79)).await;
        assert_eq!(s.get().await.unwrap().expose(), "aud.0");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.get().await.unwrap().expose(), "aud.1", "renewed at 80 %");
        // Gateway down: the unexpired token is still served, then the source fails closed.
        m.down.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(85)).await;
        assert_eq!(s.get().await.unwrap().expose(), "aud.1");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(s.get().await.is_err());
    }
}
