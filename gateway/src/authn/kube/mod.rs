//! Kubernetes ServiceAccount tokens on `POST /v1/token:issue`.
//!
//! A projected ServiceAccount token is sent to the API server in a
//! TokenReview (`authentication.k8s.io/v1`, audience `--token-audience`);
//! the review must be authenticated for that audience, name the configured
//! ServiceAccount in an allowed namespace, and carry exactly one pod name and
//! one pod UID. The live pod is then fetched: its UID must match and its
//! annotation [`SANDBOX_ANNOTATION`] must name a sandbox that exists. The
//! result is a `Bootstrap` principal carrying the pod identity.
//!
//! Every refusal has its own bounded reason label; an API server that is
//! slow or failing is a 503 (fail closed), never a token.
//!
//! Before any API call, the attempt must pass two token buckets
//! ([`ReviewLimiter`]): one per presented token (keyed by its SHA-256, so a
//! client looping on one token is slowed) and one for the whole gateway (so
//! that callers spraying distinct tokens cannot turn the gateway into a
//! TokenReview flood against the API server). A refused attempt is a 429 with
//! `Retry-After`, counted as auth failure `rate_limited` (per token) or
//! `rate_limited_global`, and never reaches the API server. Defaults:
//! [`DEFAULT_REVIEW_RATE_PER_TOKEN`], [`DEFAULT_REVIEW_RATE_GLOBAL`].
//! Must never: log or echo the ServiceAccount token (fingerprint only).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use parking_lot::Mutex;
use tokio::sync::OnceCell;

mod config;

pub use config::{DEFAULT_KUBE_TIMEOUT, DEFAULT_TOKEN_AUDIENCE, KubeAuthConfig};

use super::failure::AuthFailure;
use crate::principal::{PodIdentity, SandboxId};
use crate::store::Store;

/// Authenticator label of Kubernetes ServiceAccount tokens (metrics, logs).
pub const AUTHENTICATOR_KUBE: &str = "kubernetes";
/// Pod annotation naming the sandbox record a pod runs.
pub const SANDBOX_ANNOTATION: &str = "palisade.dev/sandbox-id";
/// `extra` keys the API server sets for pod-bound ServiceAccount tokens.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// A token bucket's refill rate and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReviewRate {
    /// Attempts added per second.
    pub per_sec: f64,
    /// Attempts allowed at once.
    pub burst: u32,
}

/// Per presented ServiceAccount token: 5 attempts at once, then one every
/// 5 s. A sidecar asks once per start or re-bootstrap, and its retries back off.
pub const DEFAULT_REVIEW_RATE_PER_TOKEN: ReviewRate = ReviewRate {
    per_sec: 0.2,
    burst: 5,
};
/// For the whole gateway: 50 TokenReviews at once (a burst of pod starts),
/// then 20 per second.
pub const DEFAULT_REVIEW_RATE_GLOBAL: ReviewRate = ReviewRate {
    per_sec: 20.0,
    burst: 50,
};
/// Per-token buckets kept before full ones are dropped; past it (after
/// dropping), new tokens are held to the global bucket only.
const MAX_TOKEN_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: ReviewRate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst.max(1)),
            at: now,
        }
    }

    /// Refill to `now`; the tokens now available.
    fn refill(&mut self, rate: ReviewRate, now: Instant) -> f64 {
        let added = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_sec;
        self.tokens = (self.tokens + added).min(f64::from(rate.burst.max(1)));
        self.at = now;
        self.tokens
    }
}

/// Whole seconds until `tokens` reaches 1 at `rate` (at least 1).
fn wait_secs(tokens: f64, rate: ReviewRate) -> u64 {
    if rate.per_sec <= 0.0 {
        return 3600;
    }
    ((1.0 - tokens) / rate.per_sec).ceil().clamp(1.0, 3600.0) as u64
}

#[derive(Debug)]
struct Buckets {
    per_token: ReviewRate,
    global_rate: ReviewRate,
    global: Bucket,
    by_token: HashMap<[u8; 32], Bucket>,
}

/// The two token buckets in front of the TokenReview (see the module doc).
#[derive(Debug)]
pub struct ReviewLimiter {
    buckets: Mutex<Buckets>,
}

impl ReviewLimiter {
    pub fn new(per_token: ReviewRate, global: ReviewRate) -> Self {
        let now = Instant::now();
        Self {
            buckets: Mutex::new(Buckets {
                per_token,
                global_rate: global,
                global: Bucket::full(global, now),
                by_token: HashMap::new(),
            }),
        }
    }

    /// Charge one attempt with `token`, or refuse it (429) without charging
    /// anything: the per-token bucket first, then the global one.
    pub fn check(&self, token: &str, now: Instant) -> Result<(), AuthFailure> {
        use sha2::{Digest, Sha256};
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut b = self.buckets.lock();
        let Buckets {
            per_token,
            global_rate,
            global,
            by_token,
        } = &mut *b;
        if by_token.len() >= MAX_TOKEN_BUCKETS && !by_token.contains_key(&key) {
            let rate = *per_token;
            by_token.retain(|_, bucket| bucket.refill(rate, now) < f64::from(rate.burst.max(1)));
        }
        let tracked = by_token.len() < MAX_TOKEN_BUCKETS || by_token.contains_key(&key);
        let mut mine = by_token
            .get(&key)
            .copied()
            .unwrap_or_else(|| Bucket::full(*per_token, now));
        let available = mine.refill(*per_token, now);
        if available < 1.0 {
            by_token.insert(key, mine);
            return Err(AuthFailure::rate_limited(
                AUTHENTICATOR_KUBE,
                "rate_limited",
                wait_secs(available, *per_token),
            ));
        }
        let global_available = global.refill(*global_rate, now);
        if global_available < 1.0 {
            if tracked {
                by_token.insert(key, mine);
            }
            return Err(AuthFailure::rate_limited(
                AUTHENTICATOR_KUBE,
                "rate_limited_global",
                wait_secs(global_available, *global_rate),
            ));
        }
        global.tokens -= 1.0;
        mine.tokens -= 1.0;
        if tracked {
            by_token.insert(key, mine);
        }
        Ok(())
    }

    /// Replace both rates (buckets start full again).
    pub fn set_rates(&self, per_token: ReviewRate, global: ReviewRate) {
        let mut b = self.buckets.lock();
        *b = Buckets {
            per_token,
            global_rate: global,
            global: Bucket::full(global, Instant::now()),
            by_token: HashMap::new(),
        };
    }
}

/// Where the client configuration comes from, read at start-up so that a
/// broken kubeconfig stops the gateway instead of failing every request.
enum Source {
    File(Box<Kubeconfig>),
    InCluster(Box<kube::Config>),
}

/// The Kubernetes authenticator (its client is built on first use, inside
/// the runtime).
pub struct KubeAuthenticator {
    settings: KubeAuthConfig,
    source: Source,
    client: OnceCell<Client>,
    /// Checked before every TokenReview.
    limiter: ReviewLimiter,
}

impl std::fmt::Debug for KubeAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuthenticator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn refuse(status: StatusCode, reason: &'static str, message: impl Into<String>) -> AuthFailure {
    AuthFailure::with_status(AUTHENTICATOR_KUBE, reason, status, message)
}

fn unauthenticated(reason: &'static str, message: impl Into<String>) -> AuthFailure {
    refuse(StatusCode::UNAUTHORIZED, reason, message)
}

fn forbidden(reason: &'static str, message: impl Into<String>) -> AuthFailure {
    refuse(StatusCode::FORBIDDEN, reason, message)
}

fn unavailable(reason: &'static str, message: impl Into<String>) -> AuthFailure {
    refuse(StatusCode::SERVICE_UNAVAILABLE, reason, message)
}

impl KubeAuthenticator {
    /// Read the kubeconfig (or the in-cluster configuration).
    pub fn load(settings: KubeAuthConfig) -> anyhow::Result<Self> {
        let source = match &settings.kube_config {
            Some(path) => Source::File(Box::new(Kubeconfig::read_from(path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read kubeconfig {} (--kube-config): {e}; point it at a valid \
                     kubeconfig file",
                    path.display()
                )
            })?)),
            None => Source::InCluster(Box::new(kube::Config::incluster().map_err(|e| {
                anyhow::anyhow!(
                    "--sandbox-service-account is set but no --kube-config was given and the \
                     in-cluster configuration is unavailable ({e}); give --kube-config PATH or \
                     run the gateway in a pod"
                )
            })?)),
        };
        Ok(Self {
            settings,
            source,
            client: OnceCell::new(),
            limiter: ReviewLimiter::new(DEFAULT_REVIEW_RATE_PER_TOKEN, DEFAULT_REVIEW_RATE_GLOBAL),
        })
    }

    /// The attempt limiter (tests tighten its rates with `set_rates`).
    pub fn limiter(&self) -> &ReviewLimiter {
        &self.limiter
    }

    async fn client(&self) -> Result<Client, AuthFailure> {
        self.client
            .get_or_try_init(|| async {
                let mut config = match &self.source {
                    Source::File(kc) => kube::Config::from_custom_kubeconfig(
                        (**kc).clone(),
                        &KubeConfigOptions::default(),
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                    Source::InCluster(c) => (**c).clone(),
                };
                // The deadline is the whole-call `--kube-timeout` in
                // `authenticate`; these only stop connections from lingering.
                let backstop = self.settings.timeout.saturating_mul(2);
                config.connect_timeout = Some(backstop);
                config.read_timeout = Some(backstop);
                config.write_timeout = Some(backstop);
                Client::try_from(config).map_err(|e| e.to_string())
            })
            .await
            .cloned()
            .map_err(|e| {
                tracing::error!(error = %e, "cannot build the Kubernetes client");
                unavailable(
                    "client_error",
                    "the gateway cannot build its Kubernetes client; check --kube-config and the \
                     gateway log",
                )
            })
    }

    /// Review `token` and resolve it to a sandbox and the pod it is bound to.
    pub async fn authenticate(
        &self,
        token: &str,
        store: &Arc<dyn Store>,
    ) -> Result<(SandboxId, PodIdentity), AuthFailure> {
        let fp = crate::tokens::fingerprint(token);
        // Before any API call: an unauthenticated caller must not be able
        // to hammer the API server through us.
        if let Err(f) = self.limiter.check(token, Instant::now()) {
            tracing::info!(token = %fp, reason = f.reason, "ServiceAccount token attempt rate-limited");
            return Err(f);
        }
        let result = tokio::time::timeout(self.settings.timeout, self.review_and_fetch(token))
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(
                    "apiserver_timeout",
                    "the Kubernetes API server did not answer in time (--kube-timeout); no token \
                     was issued, retry",
                ))
            });
        let (pod_identity, pod) = match result {
            Ok(v) => v,
            Err(f) => {
                tracing::info!(token = %fp, reason = f.reason, "ServiceAccount token refused");
                return Err(f);
            }
        };
        let id = sandbox_of(&pod)?;
        let exists = super::live_sandboxes::sandbox_exists(store, &id)
            .await
            .map_err(|()| {
                AuthFailure::with_status(
                    AUTHENTICATOR_KUBE,
                    super::failure::STORE_ERROR,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store is unavailable; retry",
                )
            })?;
        if !exists {
            return Err(forbidden(
                "unknown_sandbox",
                format!("the pod's {SANDBOX_ANNOTATION} annotation names no existing sandbox"),
            ));
        }
        tracing::info!(
            token = %fp,
            sandbox = %id,
            namespace = %pod_identity.namespace,
            pod = %pod_identity.name,
            "ServiceAccount token accepted"
        );
        Ok((id, pod_identity))
    }

    async fn review_and_fetch(&self, token: &str) -> Result<(PodIdentity, Pod), AuthFailure> {
        let client = self.client().await?;
        let reviews: Api<TokenReview> = Api::all(client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.settings.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviewed = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                unavailable(
                    "apiserver_error",
                    "the Kubernetes API server refused or failed the TokenReview; no token was \
                     issued, retry (the gateway needs `create tokenreviews`)",
                )
            })?;
        let pod_identity = self.check_review(reviewed)?;
        let pods: Api<Pod> = Api::namespaced(client, &pod_identity.namespace);
        let pod = pods
            .get_opt(&pod_identity.name)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "pod get failed");
                unavailable(
                    "apiserver_error",
                    "the Kubernetes API server failed the pod lookup; no token was issued, retry \
                     (the gateway needs `get pods`)",
                )
            })?
            .ok_or_else(|| {
                forbidden(
                    "pod_not_found",
                    "the pod this ServiceAccount token is bound to no longer exists",
                )
            })?;
        if pod.metadata.uid.as_deref() != Some(pod_identity.uid.as_str()) {
            return Err(forbidden(
                "pod_uid_mismatch",
                "the pod this token is bound to was replaced (UID differs); use the new pod's token",
            ));
        }
        Ok((pod_identity, pod))
    }

    /// The checks on the review's status (pure; unit-tested).
    fn check_review(&self, review: TokenReview) -> Result<PodIdentity, AuthFailure> {
        let status = review.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(unauthenticated(
                "review_unauthenticated",
                "the Kubernetes API server did not authenticate this ServiceAccount token",
            ));
        }
        let audience = &self.settings.audience;
        if !status
            .audiences
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|a| a == audience)
        {
            return Err(unauthenticated(
                "wrong_audience",
                format!("the ServiceAccount token is not for audience `{audience}`"),
            ));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, account)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(forbidden(
                "not_service_account",
                "the reviewed token does not belong to a ServiceAccount",
            ));
        };
        if account != self.settings.service_account {
            return Err(forbidden(
                "wrong_service_account",
                format!(
                    "only ServiceAccount `{}` may obtain sandbox tokens",
                    self.settings.service_account
                ),
            ));
        }
        if !self.settings.namespaces.iter().any(|n| n == namespace) {
            return Err(forbidden(
                "namespace_not_allowed",
                "this ServiceAccount's namespace is not in --sandbox-namespaces",
            ));
        }
        let extra = user.extra.unwrap_or_default();
        let name = exactly_one(&extra, EXTRA_POD_NAME)?;
        let uid = exactly_one(&extra, EXTRA_POD_UID)?;
        Ok(PodIdentity {
            namespace: namespace.to_owned(),
            name,
            uid,
        })
    }
}

fn exactly_one(extra: &BTreeMap<String, Vec<String>>, key: &str) -> Result<String, AuthFailure> {
    match extra.get(key).map(Vec::as_slice) {
        None | Some([]) => Err(unauthenticated(
            "missing_pod_extra",
            format!("the token is not bound to a pod (no `{key}`); mount a projected token"),
        )),
        Some([one]) if !one.is_empty() => Ok(one.clone()),
        Some([_]) => Err(unauthenticated(
            "missing_pod_extra",
            format!("the token's `{key}` is empty"),
        )),
        Some(_) => Err(unauthenticated(
            "duplicate_pod_extra",
            format!("the token carries more than one `{key}`"),
        )),
    }
}

fn sandbox_of(pod: &Pod) -> Result<SandboxId, AuthFailure> {
    let value = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ANNOTATION))
        .ok_or_else(|| {
            forbidden(
                "missing_sandbox_annotation",
                format!("the pod has no {SANDBOX_ANNOTATION} annotation"),
            )
        })?;
    SandboxId::parse(value).ok_or_else(|| {
        forbidden(
            "invalid_sandbox_annotation",
            format!("the pod's {SANDBOX_ANNOTATION} annotation is not a sandbox id"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn auth() -> KubeAuthenticator {
        KubeAuthenticator {
            settings: KubeAuthConfig {
                kube_config: None,
                service_account: "sbx".into(),
                namespaces: vec!["ns".into()],
                audience: "palisade-gateway".into(),
                timeout: std::time::Duration::from_secs(1),
            },
            source: Source::InCluster(Box::new(kube::Config::new(
                "https://127.0.0.1:1".parse().unwrap(),
            ))),
            client: OnceCell::new(),
            limiter: ReviewLimiter::new(DEFAULT_REVIEW_RATE_PER_TOKEN, DEFAULT_REVIEW_RATE_GLOBAL),
        }
    }

    #[test]
    fn limiter_charges_per_token_then_global_and_refills() {
        let per = ReviewRate {
            per_sec: 1.0,
            burst: 2,
        };
        let global = ReviewRate {
            per_sec: 2.0,
            burst: 3,
        };
        let l = ReviewLimiter::new(per, global);
        let t0 = Instant::now();
        let reason = |r: Result<(), AuthFailure>| r.err().map(|f| (f.reason, f.retry_after));
        assert_eq!(reason(l.check("a", t0)), None);
        assert_eq!(reason(l.check("a", t0)), None);
        // Token `a` is out; that refusal charged nothing globally.
        assert_eq!(reason(l.check("a", t0)), Some(("rate_limited", Some(1))));
        assert_eq!(reason(l.check("b", t0)), None);
        // Global bucket (3) is now empty: a fresh token is refused too.
        assert_eq!(
            reason(l.check("c", t0)),
            Some(("rate_limited_global", Some(1)))
        );
        let f = l.check("c", t0).unwrap_err();
        assert_eq!(f.status, StatusCode::TOO_MANY_REQUESTS);
        // Half a second later the global bucket has one again.
        let t1 = t0 + std::time::Duration::from_millis(500);
        assert_eq!(reason(l.check("c", t1)), None);
        assert_eq!(
            reason(l.check("d", t1)),
            Some(("rate_limited_global", Some(1)))
        );
    }

    fn review(user: &str, extra: &[(&str, &[&str])]) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(true),
                audiences: Some(vec!["palisade-gateway".into()]),
                user: Some(UserInfo {
                    username: Some(user.into()),
                    extra: Some(
                        extra
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.iter().map(|s| s.to_string()).collect())
                            })
                            .collect(),
                    ),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn review_checks_have_distinct_reasons() {
        let a = auth();
        let ok = [(EXTRA_POD_NAME, &["p"][..]), (EXTRA_POD_UID, &["u"][..])];
        let id = a
            .check_review(review("system:serviceaccount:ns:sbx", &ok))
            .unwrap();
        assert_eq!((id.namespace.as_str(), id.name.as_str()), ("ns", "p"));
        let reason = |r: TokenReview| a.check_review(r).unwrap_err().reason;
        assert_eq!(
            reason(review("system:serviceaccount:ns:other", &ok)),
            "wrong_service_account"
        );
        assert_eq!(
            reason(review("system:serviceaccount:xx:sbx", &ok)),
            "namespace_not_allowed"
        );
        assert_eq!(reason(review("alice", &ok)), "not_service_account");
        assert_eq!(
            reason(review(
                "system:serviceaccount:ns:sbx",
                &[(EXTRA_POD_NAME, &["p"][..])]
            )),
            "missing_pod_extra"
        );
        assert_eq!(
            reason(review(
                "system:serviceaccount:ns:sbx",
                &[
                    (EXTRA_POD_NAME, &["p", "q"][..]),
                    (EXTRA_POD_UID, &["u"][..])
                ]
            )),
            "duplicate_pod_extra"
        );
        let mut r = review("system:serviceaccount:ns:sbx", &ok);
        if let Some(s) = r.status.as_mut() {
            s.audiences = Some(vec!["other".into()]);
        }
        assert_eq!(reason(r), "wrong_audience");
        assert_eq!(reason(TokenReview::default()), "review_unauthenticated");
    }
}
