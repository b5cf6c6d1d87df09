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
//! Must never: log or echo the ServiceAccount token (fingerprint only).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::sync::OnceCell;

use super::{AUTHENTICATOR_KUBE, AuthFailure};
use crate::config::KubeAuthConfig;
use crate::principal::{PodIdentity, SandboxId};
use crate::store::Store;

/// Pod annotation naming the sandbox record a pod runs.
pub const SANDBOX_ANNOTATION: &str = "palisade.dev/sandbox-id";
/// `extra` keys the API server sets for pod-bound ServiceAccount tokens.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

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
        })
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
        store: Arc<dyn Store>,
    ) -> Result<(SandboxId, PodIdentity), AuthFailure> {
        let fp = crate::tokens::fingerprint(token);
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
        let lookup = id.clone();
        let exists = tokio::task::spawn_blocking(move || store.get_sandbox(&lookup))
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                AuthFailure::with_status(
                    AUTHENTICATOR_KUBE,
                    super::STORE_ERROR,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store is unavailable; retry",
                )
            })?
            .is_some();
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
                token: Some(token.to_owned()),
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
        }
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
