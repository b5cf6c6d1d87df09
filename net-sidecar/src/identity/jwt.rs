//! The sandbox JWT: bootstrap, refresh, re-bootstrap — held in memory only.
//!
//! Owns: turning the bootstrap credential (`--token-file` one-time token, or the projected
//! ServiceAccount token re-read each time) into a sandbox JWT; refreshing it at ~80 % of
//! its lifetime with random jitter; single-flight (concurrent callers share one exchange);
//! re-bootstrap when the gateway answers 401; publishing "identity valid until" so
//! credentials are withheld once the identity lapses; the JWT metrics.
//! Must never: write a token to disk, log or count a token (kid, jti, expiry and a SHA-256
//! fingerprint only), or reuse a one-time bootstrap token after the gateway consumed it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_api::TokenResponse;
use parking_lot::Mutex;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::client::GatewayError;
use super::metrics::IdentityMetrics;
use super::settings::Bootstrap;

/// Largest bootstrap token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;
/// Retry delays of a failed refresh (capped).
pub const RETRY_BASE: Duration = Duration::from_secs(1);
pub const RETRY_CAP: Duration = Duration::from_secs(60);

/// A sandbox JWT. `Debug` shows only its metadata.
pub struct Jwt {
    token: String,
    pub kid: String,
    pub jti: String,
    /// Unix seconds (the gateway's `expiresAt`).
    pub expires_at: u64,
    /// Local monotonic deadlines derived from the lifetime at receipt.
    pub valid_until: Instant,
    pub refresh_at: Instant,
    /// Increases with every new token.
    pub generation: u64,
}

impl Jwt {
    /// The bearer value: only for building an `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.token
    }
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.token.as_bytes())[..8])
    }
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("kid", &self.kid)
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Read the `jti` claim of a JWT without verifying it (for logs only).
fn jti_of(token: &str) -> String {
    use base64::Engine as _;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("jti")?.as_str().map(|s| s.chars().take(64).collect()))
        .unwrap_or_else(|| "-".to_owned())
}

/// When to refresh a token of `lifetime`: uniformly in [75 %, 85 %] of it.
pub fn refresh_delay(lifetime: Duration) -> Duration {
    lifetime.mul_f64(rand::rng().random_range(0.75..=0.85))
}

/// Boxed future of an [`Issuer`] call.
pub type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = Result<TokenResponse, GatewayError>> + Send + 'a>>;

/// The two gateway calls (a trait so refresh logic is testable without a gateway).
pub trait Issuer: Send + Sync + std::fmt::Debug {
    /// `POST /v1/token:issue` with the bootstrap credential as bearer.
    fn issue<'a>(&'a self, bootstrap: &'a str) -> IssueFuture<'a>;
    /// `POST /v1/token:refresh` with the current JWT as bearer.
    fn refresh<'a>(&'a self, jwt: &'a str) -> IssueFuture<'a>;
}

/// Why no JWT is available.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(
        "the one-time bootstrap token was already used and the gateway no longer accepts this \
         sandbox's JWT; the sidecar cannot re-identify itself — recreate the sandbox (the \
         driver mints a new bootstrap token) or run with --k8s-sa-token-file"
    )]
    BootstrapSpent,
    #[error("cannot read the bootstrap token file {path}: {why}")]
    TokenFile { path: String, why: String },
}

enum OneTime {
    Pending(String),
    Spent,
}

/// The sandbox identity.
pub struct JwtStore {
    issuer: Arc<dyn Issuer>,
    sa_token_file: Option<PathBuf>,
    one_time: Mutex<OneTime>,
    current: watch::Sender<Option<Arc<Jwt>>>,
    flight: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    metrics: IdentityMetrics,
}

impl std::fmt::Debug for JwtStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtStore")
            .field("current", &*self.current.borrow())
            .finish_non_exhaustive()
    }
}

fn read_token_file(path: &std::path::Path) -> Result<String, IdentityError> {
    use std::io::Read as _;
    let err = |why: String| IdentityError::TokenFile {
        path: path.display().to_string(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.kind().to_string()))?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| err(e.kind().to_string()))?;
    let token = text.trim();
    if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(err("empty, or not a single token".into()));
    }
    Ok(token.to_owned())
}

impl JwtStore {
    /// Read the one-time token now (it is kept in memory until the gateway consumes it).
    pub fn new(
        issuer: Arc<dyn Issuer>,
        bootstrap: &Bootstrap,
        metrics: IdentityMetrics,
    ) -> Result<Self, IdentityError> {
        let (one_time, sa) = match bootstrap {
            Bootstrap::OneTime(p) => (OneTime::Pending(read_token_file(p)?), None),
            Bootstrap::ServiceAccount(p) => (OneTime::Spent, Some(p.clone())),
        };
        Ok(Self {
            issuer,
            sa_token_file: sa,
            one_time: Mutex::new(one_time),
            current: watch::channel(None).0,
            flight: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            metrics,
        })
    }

    /// Follow the current JWT (None = no valid identity).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Jwt>>> {
        self.current.subscribe()
    }

    /// The current JWT if it has not expired.
    pub fn current(&self) -> Option<Arc<Jwt>> {
        self.current.borrow().clone().filter(|j| j.is_valid())
    }

    /// A valid JWT, renewing first if there is none.
    pub async fn get(&self) -> Result<Arc<Jwt>, IdentityError> {
        if let Some(j) = self.current() {
            return Ok(j);
        }
        let seen = self.current.borrow().as_ref().map_or(0, |j| j.generation);
        self.renew(seen).await
    }

    /// Replace the JWT whose generation the caller saw (`seen`). Single-flight: callers that
    /// arrive while an exchange runs wait for it and share its result; a caller whose token
    /// was already replaced gets the new one without another exchange.
    pub async fn renew(&self, seen: u64) -> Result<Arc<Jwt>, IdentityError> {
        let _flight = self.flight.lock().await;
        let now = self.current.borrow().clone();
        if let Some(j) = &now
            && j.generation != seen
            && j.is_valid()
        {
            return Ok(j.clone());
        }
        // A token that expired here is still offered: the gateway accepts it within its
        // leeway (an outage a little longer than the lifetime is survivable), and refuses it
        // with 401 otherwise, which leads to a re-bootstrap below.
        let result = match now.as_ref() {
            Some(j) => match self.issuer.refresh(j.expose()).await {
                Ok(resp) => Ok(self.install(resp, "refreshed")),
                Err(e) if e.is_unauthorized() => {
                    self.count("unauthorized");
                    tracing::warn!(kid = %j.kid, jti = %j.jti, error = %e,
                        "the gateway refused the sandbox JWT; re-bootstrapping");
                    self.bootstrap().await
                }
                Err(e) => Err(e.into()),
            },
            None => self.bootstrap().await,
        };
        match &result {
            Err(IdentityError::BootstrapSpent) => {
                // The identity is gone for good: withhold everything that depends on it.
                self.current.send_replace(None);
                self.metrics.jwt_expiry.set(0);
            }
            Err(IdentityError::Gateway(e)) if e.is_unauthorized() => {
                self.current.send_replace(None);
                self.metrics.jwt_expiry.set(0);
            }
            Err(_) => self.count("failed"),
            Ok(_) => {}
        }
        result
    }

    /// `token:issue` with the bootstrap credential.
    async fn bootstrap(&self) -> Result<Arc<Jwt>, IdentityError> {
        let first = self.generation.load(Ordering::Relaxed) == 0;
        let credential = match &self.sa_token_file {
            Some(path) => read_token_file(path)?,
            None => {
                let guard = self.one_time.lock();
                match &*guard {
                    OneTime::Pending(t) => t.clone(),
                    OneTime::Spent => {
                        self.count("rebootstrap_impossible");
                        return Err(IdentityError::BootstrapSpent);
                    }
                }
            }
        };
        let result = self.issuer.issue(&credential).await;
        if self.sa_token_file.is_none()
            && (result.is_ok() || result.as_ref().is_err_and(GatewayError::is_unauthorized))
        {
            // Consumed (or refused as already used): never send it again.
            *self.one_time.lock() = OneTime::Spent;
        }
        match result {
            Ok(resp) => Ok(self.install(resp, if first { "issued" } else { "rebootstrapped" })),
            Err(e) if e.is_unauthorized() && self.sa_token_file.is_none() => {
                self.count("rebootstrap_impossible");
                tracing::error!(error = %e, "the gateway refused the one-time bootstrap token");
                Err(IdentityError::BootstrapSpent)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn install(&self, resp: TokenResponse, outcome: &'static str) -> Arc<Jwt> {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let lifetime = Duration::from_secs(resp.expires_at.saturating_sub(now_unix).max(1));
        let now = Instant::now();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let jwt = Arc::new(Jwt {
            jti: jti_of(&resp.token),
            token: resp.token,
            kid: resp.kid,
            expires_at: resp.expires_at,
            valid_until: now + lifetime,
            refresh_at: now + refresh_delay(lifetime),
            generation,
        });
        tracing::info!(kid = %jwt.kid, jti = %jwt.jti, exp = jwt.expires_at,
            fingerprint = %jwt.fingerprint(), outcome, "sandbox JWT acquired");
        self.count(outcome);
        self.metrics
            .jwt_expiry
            .set(i64::try_from(resp.expires_at).unwrap_or(i64::MAX));
        self.current.send_replace(Some(jwt.clone()));
        jwt
    }

    fn count(&self, outcome: &str) {
        self.metrics.refreshes.with_label_values(&[outcome]).inc();
    }

    /// Keep the identity fresh forever: refresh at the scheduled time, retry failures with
    /// capped backoff (the old token stays in use until it expires).
    pub async fn maintain(self: Arc<Self>) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        loop {
            let (seen, at) = match self.current.borrow().as_ref() {
                Some(j) => (j.generation, Some(j.refresh_at)),
                None => (0, None),
            };
            if let Some(at) = at {
                tokio::time::sleep_until(at).await;
            }
            match self.renew(seen).await {
                Ok(_) => backoff.reset(),
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in = ?delay,
                        "cannot renew the sandbox JWT; the current one stays in use until it expires");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// [`Issuer`] over the gateway API.
#[derive(Debug)]
pub struct GatewayIssuer(pub super::client::GatewayClient);

impl Issuer for GatewayIssuer {
    fn issue<'a>(&'a self, bootstrap: &'a str) -> IssueFuture<'a> {
        Box::pin(async move {
            let req = self
                .0
                .request(http::Method::POST, "/v1/token:issue", bootstrap, None)?;
            self.0.call(req).await
        })
    }
    fn refresh<'a>(&'a self, jwt: &'a str) -> IssueFuture<'a> {
        Box::pin(async move {
            let req = self
                .0
                .request(http::Method::POST, "/v1/token:refresh", jwt, None)?;
            self.0.call(req).await
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug, Default)]
    struct Fake {
        issues: AtomicUsize,
        refreshes: AtomicUsize,
        ttl: u64,
        refuse_refresh: std::sync::atomic::AtomicBool,
    }

    fn unix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    impl Fake {
        fn answer(&self, n: usize) -> TokenResponse {
            TokenResponse {
                token: format!("tok-{n}"),
                token_type: "Bearer".into(),
                sandbox_id: palisade_api::SandboxId::parse("sbx-0123456789abcdef0123456789abcdef")
                    .unwrap(),
                expires_at: unix() + self.ttl,
                kid: "k1".into(),
            }
        }
    }

    impl Issuer for Fake {
        fn issue<'a>(&'a self, bootstrap: &'a str) -> IssueFuture<'a> {
            Box::pin(async move {
                assert_eq!(bootstrap, "pbt_test");
                tokio::time::sleep(Duration::from_millis(50)).await;
                let n = self.issues.fetch_add(1, Ordering::SeqCst);
                if n > 0 {
                    return Err(GatewayError::Unauthorized("already used".into()));
                }
                Ok(self.answer(n))
            })
        }
        fn refresh<'a>(&'a self, _jwt: &'a str) -> IssueFuture<'a> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if self.refuse_refresh.load(Ordering::SeqCst) {
                    return Err(GatewayError::Unauthorized("sandbox deleted".into()));
                }
                let n = self.refreshes.fetch_add(1, Ordering::SeqCst);
                Ok(self.answer(100 + n))
            })
        }
    }

    fn store(fake: Arc<Fake>) -> (Arc<JwtStore>, IdentityMetrics, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "pbt_test\n").unwrap();
        let m = IdentityMetrics::unregistered();
        let s = JwtStore::new(fake, &Bootstrap::OneTime(p), m.clone()).unwrap();
        (Arc::new(s), m, dir)
    }

    #[test]
    fn jitter_stays_within_75_to_85_percent_and_varies() {
        let life = Duration::from_secs(900);
        let delays: Vec<_> = (0..500).map(|_| refresh_delay(life)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= life.mul_f64(0.75) && *d <= life.mul_f64(0.85))
        );
        let first = delays[0];
        assert!(delays.iter().any(|d| *d != first), "jitter is not random");
    }

    #[tokio::test(start_paused = true)]
    async fn many_concurrent_callers_share_one_refresh() {
        let fake = Arc::new(Fake {
            ttl: 600,
            ..Fake::default()
        });
        let (s, m, _dir) = store(fake.clone());
        let first = s.get().await.unwrap();
        assert_eq!(fake.issues.load(Ordering::SeqCst), 1);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let s = s.clone();
                let seen = first.generation;
                tokio::spawn(async move { s.renew(seen).await.unwrap().jti.clone() })
            })
            .collect();
        let mut tokens = Vec::new();
        for t in tasks {
            tokens.push(t.await.unwrap());
        }
        assert_eq!(
            fake.refreshes.load(Ordering::SeqCst),
            1,
            "one exchange for all"
        );
        assert!(tokens.iter().all(|t| *t == tokens[0]));
        assert_eq!(s.current().unwrap().expose(), "tok-100");
        assert_eq!(m.refreshes.with_label_values(&["refreshed"]).get(), 1);
        assert_eq!(m.refreshes.with_label_values(&["issued"]).get(), 1);
        assert!(m.jwt_expiry.get() > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn maintain_refreshes_before_expiry_and_stops_injecting_when_refused() {
        let fake = Arc::new(Fake {
            ttl: 100,
            ..Fake::default()
        });
        let (s, m, _dir) = store(fake.clone());
        let first = s.get().await.unwrap();
        assert!(first.refresh_at - Instant::now() >= Duration::from_secs(74));
        let mut rx = s.subscribe();
        tokio::spawn(s.clone().maintain());
        // Virtual time: the refresh happens at 75–85 s, before the 100 s expiry.
        rx.changed().await.unwrap();
        let second = rx.borrow().clone().unwrap();
        assert_eq!(second.expose(), "tok-100");
        assert_eq!(fake.issues.load(Ordering::SeqCst), 1);
        // Sandbox deleted: refresh 401 → re-bootstrap impossible → identity withdrawn.
        fake.refuse_refresh.store(true, Ordering::SeqCst);
        rx.changed().await.unwrap();
        assert!(rx.borrow().is_none());
        assert_eq!(m.jwt_expiry.get(), 0);
        assert!(
            m.refreshes
                .with_label_values(&["rebootstrap_impossible"])
                .get()
                >= 1
        );
        let err = s.get().await.unwrap_err();
        assert!(err.to_string().contains("already used"), "{err}");
        // The one-time token was sent exactly once.
        assert_eq!(fake.issues.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_jwt_is_offered_for_refresh_before_any_rebootstrap() {
        let fake = Arc::new(Fake {
            ttl: 10,
            ..Fake::default()
        });
        let (s, m, _dir) = store(fake.clone());
        let first = s.get().await.unwrap();
        // The gateway was away for longer than the lifetime.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(s.current().is_none(), "an expired JWT is never handed out");
        let second = s.get().await.unwrap();
        assert_eq!(second.expose(), "tok-100", "refreshed with the expired JWT");
        assert!(second.generation > first.generation);
        assert_eq!(fake.issues.load(Ordering::SeqCst), 1, "no re-bootstrap");
        assert_eq!(m.refreshes.with_label_values(&["refreshed"]).get(), 1);
        // Past the gateway's leeway it answers 401: only then is a re-bootstrap tried (and,
        // with a spent one-time token, the identity is withdrawn).
        tokio::time::sleep(Duration::from_secs(30)).await;
        fake.refuse_refresh.store(true, Ordering::SeqCst);
        assert!(s.get().await.is_err());
        assert!(s.current().is_none());
        assert_eq!(m.refreshes.with_label_values(&["unauthorized"]).get(), 1);
        assert_eq!(
            m.refreshes
                .with_label_values(&["rebootstrap_impossible"])
                .get(),
            1
        );
        assert_eq!(
            fake.issues.load(Ordering::SeqCst),
            1,
            "the spent token is not resent"
        );
    }

    #[test]
    fn debug_and_logs_never_show_the_token() {
        let j = Jwt {
            token: "eyJ.eyJqdGkiOiJhYmMifQ.sig".into(),
            kid: "k".into(),
            jti: jti_of("eyJ.eyJqdGkiOiJhYmMifQ.sig"),
            expires_at: 1,
            valid_until: Instant::now(),
            refresh_at: Instant::now(),
            generation: 1,
        };
        assert_eq!(j.jti, "abc");
        let d = format!("{j:?}");
        assert!(!d.contains("eyJ"), "{d}");
    }
}
