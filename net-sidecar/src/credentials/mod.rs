//! Credentials the sidecar injects into inspected requests.
//!
//! Owns: the [`Secret`] newtype (redacting `Debug`, SHA-256 fingerprint for audit), the async
//! [`CredentialSource`] trait every source implements (file and env in `sources`, served only
//! to a sidecar whose policy is local — never with `--gateway`; secrets
//! delivered by the gateway and their endpoint bindings in `delivered`; gateway workload
//! tokens in `workload`), the per-policy [`Registry`] of sources, the binding check behind
//! 403 `credential_endpoint_mismatch`, and building the header value (`inject.header`,
//! `inject.scheme`) with validation.
//! Must never: log, count or put in an error a secret value — only names and fingerprints.

mod delivered;
mod sources;
pub mod token_grant;
mod workload;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use palisade_policy::model::{Credential, CredentialSource as SourceSpec};
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

pub use self::delivered::{DeliveredStore, EndpointMismatch};
pub use self::sources::{EnvSource, FileSource, Unavailable};
pub use self::workload::{FetchFuture, WorkloadTokenSource, WorkloadTokens};

/// A credential value. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value; surrounding whitespace (a trailing newline in a file) is removed.
    pub fn new(value: &str) -> Result<Self, CredentialError> {
        let v = value.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
        if v.is_empty() {
            return Err(CredentialError::Invalid("the value is empty"));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(CredentialError::Invalid(
                "the value contains CR, LF or NUL (header injection)",
            ));
        }
        if v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(CredentialError::Invalid(
                "the value contains control characters",
            ));
        }
        Ok(Self(v.to_owned()))
    }

    /// The value itself: only for building the header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// First 8 bytes of SHA-256, hex: identifies a value in audit logs without revealing it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..8])
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(sha256:{}…)", self.fingerprint())
    }
}

/// Why no value is available. Messages never contain the value.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("credential source not implemented in this sidecar: {0}")]
    NotImplemented(&'static str),
    #[error("cannot read the credential: {0}")]
    Unreadable(String),
    #[error("the credential value is unusable: {0}")]
    Invalid(&'static str),
    #[error("the policy names credential `{0}` but does not define it")]
    Undefined(String),
}

/// Boxed future returned by [`CredentialSource::get`] (object-safe async).
pub type GetFuture<'a> = Pin<Box<dyn Future<Output = Result<Secret, CredentialError>> + Send + 'a>>;

/// A place a credential value comes from. Implementations cache and refresh on their own
/// (files are re-read when they change; token sources refresh before expiry).
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    /// The current value.
    fn get(&self) -> GetFuture<'_>;
    /// The value for a request to `target`; sources with per-endpoint behaviour (token
    /// grants with `overrides`) override this.
    fn get_for<'a>(&'a self, target: &'a token_grant::RequestTarget<'a>) -> GetFuture<'a> {
        let _ = target;
        self.get()
    }
    /// A bounded label naming the source kind (`file`, `env`, …).
    fn kind(&self) -> &'static str;
}

/// Why a gateway-managed sidecar serves no `file`/`env` credential.
const LOCAL_ONLY: &str = "file/env (only in a policy loaded locally with --policy, never in one \
                          delivered by the gateway)";

/// A credential's definition and the source built from it.
type Entry = (Credential, Arc<dyn CredentialSource>);

/// What a gateway-managed sidecar adds: the delivered secrets and the workload-token minter.
#[derive(Debug, Clone)]
pub struct GatewayCredentials {
    pub delivered: Arc<DeliveredStore>,
    pub workload: Arc<dyn WorkloadTokens>,
}

/// Sources by credential name, rebuilt lazily when a policy generation changes a definition.
#[derive(Debug, Default)]
pub struct Registry {
    sources: Mutex<HashMap<String, Entry>>,
    gateway: Option<GatewayCredentials>,
    token_grants: Option<token_grant::TokenGrantClient>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry whose `secret` and `workloadToken` sources are served through the gateway.
    pub fn with_gateway(gateway: GatewayCredentials) -> Self {
        Self {
            sources: Mutex::default(),
            gateway: Some(gateway),
            token_grants: None,
        }
    }

    /// Serve `tokenGrant` sources through `client` (Workload API, TLS trust, token cache).
    pub fn with_token_grants(mut self, client: token_grant::TokenGrantClient) -> Self {
        self.token_grants = Some(client);
        self
    }

    /// Whether credential `name` (as `def` defines it) may be injected on a request to
    /// `host:port` with the normalised `path` (`None` if the path cannot be normalised).
    /// Only gateway-delivered secrets carry bindings; other sources are bound by the policy
    /// rule that names them.
    pub fn check_binding(
        &self,
        name: &str,
        def: &Credential,
        host: &str,
        port: u16,
        path: Option<&str>,
    ) -> Result<(), EndpointMismatch> {
        match (&def.from, &self.gateway) {
            (SourceSpec::Secret { .. }, Some(gw)) => gw.delivered.check(name, host, port, path),
            _ => Ok(()),
        }
    }

    /// The source for `name` as `def` defines it (re-created if the definition changed).
    pub fn source(&self, name: &str, def: &Credential) -> Arc<dyn CredentialSource> {
        let mut map = self.sources.lock();
        if let Some((known, src)) = map.get(name)
            && known == def
        {
            return src.clone();
        }
        let src: Arc<dyn CredentialSource> = match &def.from {
            // A gateway-managed sidecar's policy comes from the gateway, which may not make it
            // read the sidecar's own files or environment (refused there and by the policy
            // feed; this is the last line).
            SourceSpec::File(_) | SourceSpec::Env(_) if self.gateway.is_some() => {
                Arc::new(Unavailable(LOCAL_ONLY))
            }
            SourceSpec::File(path) => Arc::new(FileSource::new(path.into())),
            SourceSpec::Env(var) => Arc::new(EnvSource::new(var)),
            SourceSpec::Secret { .. } => match &self.gateway {
                Some(gw) => Arc::new(delivered::DeliveredSource {
                    store: gw.delivered.clone(),
                    name: name.to_owned(),
                }),
                None => Arc::new(Unavailable(
                    "secret (gateway-held secrets need --gateway, not --policy)",
                )),
            },
            SourceSpec::TokenGrant(grant) => match &self.token_grants {
                Some(client) => Arc::new(token_grant::TokenGrantSource::new(grant, client.clone())),
                None => Arc::new(Unavailable("tokenGrant (no token-grant client configured)")),
            },
            SourceSpec::WorkloadToken { audience } => match &self.gateway {
                Some(gw) => Arc::new(WorkloadTokenSource::new(audience, gw.workload.clone())),
                None => Arc::new(Unavailable(
                    "workloadToken (gateway workload tokens need --gateway, not --policy)",
                )),
            },
        };
        // A gateway-managed sidecar injects nothing, whatever the source, once the sandbox
        // identity has lapsed or was revoked (deleting the sandbox stops all injection).
        let src: Arc<dyn CredentialSource> = match &self.gateway {
            Some(gw) => Arc::new(IdentityGated {
                inner: src,
                delivered: gw.delivered.clone(),
            }),
            None => src,
        };
        map.insert(name.to_owned(), (def.clone(), src.clone()));
        src
    }
}

/// A source that answers only while the sandbox identity is valid.
#[derive(Debug)]
struct IdentityGated {
    inner: Arc<dyn CredentialSource>,
    delivered: Arc<DeliveredStore>,
}

impl CredentialSource for IdentityGated {
    fn get(&self) -> GetFuture<'_> {
        if !self.delivered.identity_valid() {
            return Box::pin(std::future::ready(Err(delivered::identity_lapsed())));
        }
        self.inner.get()
    }
    fn get_for<'a>(&'a self, target: &'a token_grant::RequestTarget<'a>) -> GetFuture<'a> {
        if !self.delivered.identity_valid() {
            return Box::pin(std::future::ready(Err(delivered::identity_lapsed())));
        }
        self.inner.get_for(target)
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

/// The header to set for `def` with `secret`: `inject.header: [scheme ]value`. A `Bearer`
/// scheme requires an RFC 6750 token68 value.
pub fn header_for(
    def: &Credential,
    secret: &Secret,
) -> Result<(HeaderName, HeaderValue), CredentialError> {
    let name = HeaderName::from_bytes(def.inject.header.as_bytes())
        .map_err(|_| CredentialError::Invalid("inject.header is not a valid header name"))?;
    let value = match def.inject.scheme.as_deref() {
        Some(scheme) => {
            if scheme.eq_ignore_ascii_case("bearer") && !is_token68(secret.expose()) {
                return Err(CredentialError::Invalid(
                    "a Bearer token must be token68 (letters, digits, -._~+/ and trailing =)",
                ));
            }
            format!("{scheme} {}", secret.expose())
        }
        None => secret.expose().to_owned(),
    };
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| CredentialError::Invalid("the value is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// RFC 7235 token68.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use palisade_policy::model::Injection;

    fn def(from: SourceSpec, scheme: Option<&str>) -> Credential {
        Credential {
            from,
            inject: Injection {
                header: "Authorization".into(),
                scheme: scheme.map(str::to_owned),
            },
        }
    }

    #[test]
    fn secrets_are_validated_and_never_printed() {
        let s = Secret::new("tok-123\n").unwrap();
        assert_eq!(s.expose(), "tok-123");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("tok-123"), "{dbg}");
        assert_eq!(s.fingerprint().len(), 16);
        for bad in ["", "\n", "a\r\nX-Evil: 1", "a\nb", "a\0b", "a\x01b"] {
            assert!(Secret::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_values() {
        let d = def(SourceSpec::Env("X".into()), Some("Bearer"));
        let (n, v) = header_for(&d, &Secret::new("abc.DEF-1_~+/==").unwrap()).unwrap();
        assert_eq!(n, http::header::AUTHORIZATION);
        assert_eq!(v, "Bearer abc.DEF-1_~+/==");
        assert!(v.is_sensitive());
        assert!(header_for(&d, &Secret::new("has space").unwrap()).is_err());
        assert!(header_for(&d, &Secret::new("a=b").unwrap()).is_err());
        let raw = def(SourceSpec::Env("X".into()), None);
        let (_, v) = header_for(&raw, &Secret::new("key with space").unwrap()).unwrap();
        assert_eq!(v, "key with space");
        let mut custom = def(SourceSpec::Env("X".into()), Some("token"));
        custom.inject.header = "X-Api-Key".into();
        let (n, v) = header_for(&custom, &Secret::new("k").unwrap()).unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-api-key", "token k"));
    }

    #[tokio::test]
    async fn registry_builds_and_reuses_sources() {
        let r = Registry::new();
        let d = def(
            SourceSpec::WorkloadToken {
                audience: "a".into(),
            },
            Some("Bearer"),
        );
        let s = r.source("wl", &d);
        assert!(matches!(
            s.get().await,
            Err(CredentialError::NotImplemented(_))
        ));
        assert!(Arc::ptr_eq(&s, &r.source("wl", &d)));
        let d2 = def(SourceSpec::Env("PALISADE_TEST_NOPE_X".into()), None);
        let s2 = r.source("wl", &d2);
        assert_eq!(s2.kind(), "env");
    }

    #[tokio::test]
    async fn a_gateway_managed_sidecar_never_reads_its_own_files_or_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "file-token\n").unwrap();
        let file_def = def(SourceSpec::File(file.display().to_string()), Some("Bearer"));
        let env_def = def(SourceSpec::Env("PATH".into()), None);
        // Locally (--policy) both are served...
        let local = Registry::new();
        assert_eq!(
            local.source("f", &file_def).get().await.unwrap().expose(),
            "file-token"
        );
        assert!(local.source("e", &env_def).get().await.is_ok());
        // ...with --gateway neither is, even with a valid identity.
        let (tx, rx) = tokio::sync::watch::channel(None);
        tx.send_replace(Some(
            tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        ));
        let r = Registry::with_gateway(GatewayCredentials {
            delivered: Arc::new(DeliveredStore::new(rx)),
            workload: Arc::new(AlwaysMints),
        });
        for (name, d) in [("f", &file_def), ("e", &env_def)] {
            let err = r.source(name, d).get().await.unwrap_err();
            assert!(
                matches!(err, CredentialError::NotImplemented(_))
                    && err.to_string().contains("--policy"),
                "{err}"
            );
        }
    }

    #[derive(Debug)]
    struct AlwaysMints;

    impl WorkloadTokens for AlwaysMints {
        fn fetch<'a>(&'a self, audience: &'a str) -> FetchFuture<'a> {
            Box::pin(async move {
                Ok((
                    Secret::new(&format!("minted-for-{audience}")).unwrap(),
                    std::time::Duration::from_secs(300),
                ))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_managed_sidecar_injects_nothing_once_the_identity_lapses() {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let r = Registry::with_gateway(GatewayCredentials {
            delivered: Arc::new(DeliveredStore::new(rx)),
            workload: Arc::new(AlwaysMints),
        });
        let wl_def = def(
            SourceSpec::WorkloadToken {
                audience: "aud".into(),
            },
            Some("Bearer"),
        );
        let wl = r.source("wl", &wl_def);
        assert_eq!(
            wl.kind(),
            "workload_token",
            "the gate keeps the source's label"
        );
        let lapsed = |e: CredentialError| e.to_string().contains("lapsed");
        assert!(lapsed(wl.get().await.unwrap_err()), "no identity yet");
        tx.send_replace(Some(
            tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        ));
        assert_eq!(wl.get().await.unwrap().expose(), "minted-for-aud");
        // Revoked (sandbox deleted): even the cached workload token is withheld.
        tx.send_replace(None);
        assert!(lapsed(wl.get().await.unwrap_err()));
        // Lapsed (the gateway away past the JWT's expiry).
        tx.send_replace(Some(
            tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        ));
        assert!(wl.get().await.is_ok());
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        assert!(lapsed(wl.get().await.unwrap_err()));
    }
}
