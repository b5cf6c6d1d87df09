//! Credentials the gateway delivers over the session (`from: {secret: {name, key}}`), and
//! the bindings that say where each may be injected.
//!
//! Owns: the [`DeliveredStore`] (replaced as a whole by each `Credentials` event), the
//! [`DeliveredSource`] that reads it, and [`Binding`] matching (host pattern, port, path
//! globs) behind the 403 `credential_endpoint_mismatch`.
//! Must never: hand out a value while the sandbox identity has lapsed (expired or revoked
//! JWT), or log a value (names and fingerprints only).

use std::collections::HashMap;
use std::sync::Arc;

use palisade_api::session::{CredentialBinding, DeliveredCredential};
use palisade_policy::PathGlob;
use palisade_policy::host::{HostPattern, parse_pattern, with_lookup_key};
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{CredentialError, CredentialSource, GetFuture, Secret};

/// Until when the sandbox identity is valid (`None` = no identity yet, or revoked).
pub type IdentityValidity = watch::Receiver<Option<Instant>>;

/// Longest path a binding glob may have, in segments (bounds matching work).
const MAX_GLOB_SEGMENTS: usize = 64;

/// Why a gateway-managed sidecar withholds every credential.
pub fn identity_lapsed() -> CredentialError {
    CredentialError::Unreadable(
        "the sandbox identity has lapsed (gateway unreachable past the JWT's expiry, or the \
         sandbox was deleted); credentials are withheld"
            .into(),
    )
}

/// One place a credential may be injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    host: HostPattern,
    port: u16,
    /// Empty = any path. The policy crate's matcher, so a binding means what the rule means.
    paths: Vec<PathGlob>,
}

impl Binding {
    pub fn parse(b: &CredentialBinding) -> Result<Self, String> {
        let host = parse_pattern(&b.host)?;
        for p in &b.paths {
            if !p.starts_with('/') || p.split('/').count() > MAX_GLOB_SEGMENTS {
                return Err(format!("path glob `{p}` must start with / and be short"));
            }
        }
        Ok(Self {
            host,
            port: b.port,
            paths: b.paths.iter().map(|p| PathGlob::new(p)).collect(),
        })
    }

    /// Whether a request to `host:port` with normalised `path` (None = not normalisable)
    /// is covered.
    pub fn matches(&self, host: &str, port: u16, path: Option<&str>) -> bool {
        if port != self.port {
            return false;
        }
        let host_ok = with_lookup_key(host, |key| match &self.host {
            HostPattern::Exact(h) => key == h,
            HostPattern::Wildcard(parent) => key
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            HostPattern::Ip(ip) => key == ip.to_string(),
        })
        .unwrap_or(false);
        if !host_ok {
            return false;
        }
        if self.paths.is_empty() {
            return true;
        }
        let Some(path) = path else { return false };
        self.paths.iter().any(|g| g.matches(path))
    }
}

#[derive(Debug)]
struct Delivered {
    secret: Secret,
    bindings: Vec<Binding>,
}

/// The current delivered set, keyed by the policy's credential name.
#[derive(Debug)]
pub struct DeliveredStore {
    set: RwLock<(u64, HashMap<String, Delivered>)>,
    identity: IdentityValidity,
}

/// Why a credential may not be injected on a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credential `{0}` is not bound to this host, port and path")]
pub struct EndpointMismatch(pub String);

impl DeliveredStore {
    pub fn new(identity: IdentityValidity) -> Self {
        Self {
            set: RwLock::new((0, HashMap::new())),
            identity,
        }
    }

    /// Replace the whole set (one `Credentials` event). Unusable entries are dropped with a
    /// warning naming them; the rest is installed.
    pub fn replace(&self, revision: u64, creds: Vec<DeliveredCredential>) {
        let mut map = HashMap::new();
        for c in creds {
            let secret = match Secret::new(&c.value) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(credential = %c.name, error = %e, "delivered credential refused");
                    continue;
                }
            };
            let bindings: Result<Vec<_>, _> = c.bindings.iter().map(Binding::parse).collect();
            match bindings {
                Ok(bindings) => {
                    tracing::info!(credential = %c.name, fingerprint = %secret.fingerprint(),
                        bindings = bindings.len(), revision, "credential delivered");
                    map.insert(c.name, Delivered { secret, bindings });
                }
                Err(e) => {
                    tracing::warn!(credential = %c.name, error = %e, "delivered credential has a bad binding; refused");
                }
            }
        }
        let mut set = self.set.write();
        *set = (revision, map);
    }

    /// Whether the sandbox identity is valid now; every credential of a gateway-managed
    /// sidecar is withheld while it is not.
    pub fn identity_valid(&self) -> bool {
        self.identity
            .borrow()
            .is_some_and(|until| Instant::now() < until)
    }

    /// The value for policy credential `name`.
    pub fn get(&self, name: &str) -> Result<Secret, CredentialError> {
        if !self.identity_valid() {
            return Err(identity_lapsed());
        }
        let set = self.set.read();
        set.1.get(name).map(|d| d.secret.clone()).ok_or_else(|| {
            CredentialError::Unreadable(format!(
                "the gateway has not delivered credential `{name}` (is the secret stored? \
                 `palisade secret list`)"
            ))
        })
    }

    /// Whether `name` may be injected on `host:port` + `path`. A credential that was not
    /// delivered passes here (its `get` fails closed with 502 instead).
    pub fn check(
        &self,
        name: &str,
        host: &str,
        port: u16,
        path: Option<&str>,
    ) -> Result<(), EndpointMismatch> {
        let set = self.set.read();
        match set.1.get(name) {
            None => Ok(()),
            Some(d) if d.bindings.iter().any(|b| b.matches(host, port, path)) => Ok(()),
            Some(_) => Err(EndpointMismatch(name.to_owned())),
        }
    }
}

/// `from: {secret: …}` with a gateway: reads the delivered set.
#[derive(Debug)]
pub struct DeliveredSource {
    pub store: Arc<DeliveredStore>,
    pub name: String,
}

impl CredentialSource for DeliveredSource {
    fn get(&self) -> GetFuture<'_> {
        let v = self.store.get(&self.name);
        Box::pin(async move { v })
    }
    fn kind(&self) -> &'static str {
        "secret"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn b(host: &str, port: u16, paths: &[&str]) -> Binding {
        Binding::parse(&CredentialBinding {
            host: host.into(),
            port,
            paths: paths.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn bindings_match_host_port_and_path() {
        let exact = b("api.example.com", 443, &["/v1/**"]);
        assert!(exact.matches("api.example.com", 443, Some("/v1/x")));
        assert!(exact.matches("API.Example.com.", 443, Some("/v1")));
        assert!(!exact.matches("api.example.com", 8443, Some("/v1/x")));
        assert!(!exact.matches("evil.example.com", 443, Some("/v1/x")));
        assert!(!exact.matches("api.example.com", 443, Some("/v2")));
        assert!(!exact.matches("api.example.com", 443, None));
        let wild = b("*.example.com", 443, &[]);
        assert!(wild.matches("a.example.com", 443, None));
        assert!(!wild.matches("example.com", 443, None));
        assert!(!wild.matches("a.b.example.com", 443, None));
        let ip = b("198.18.0.7", 80, &[]);
        assert!(ip.matches("198.18.0.7", 80, Some("/")));
        assert!(
            Binding::parse(&CredentialBinding {
                host: "x y".into(),
                port: 1,
                paths: vec![]
            })
            .is_err()
        );
    }

    fn cred(name: &str, value: &str, host: &str) -> DeliveredCredential {
        DeliveredCredential {
            name: name.into(),
            value: value.into(),
            bindings: vec![CredentialBinding {
                host: host.into(),
                port: 443,
                paths: vec!["/ok/**".into()],
            }],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn store_serves_only_while_identity_is_valid() {
        let (tx, rx) = watch::channel(None);
        let store = DeliveredStore::new(rx);
        store.replace(
            1,
            vec![
                cred("gh", "tok-1", "api.test"),
                cred("bad", "a\nb", "api.test"),
            ],
        );
        assert!(store.get("gh").is_err(), "no identity yet");
        tx.send_replace(Some(Instant::now() + std::time::Duration::from_secs(60)));
        assert_eq!(store.get("gh").unwrap().expose(), "tok-1");
        assert!(store.get("bad").is_err(), "CR/LF value refused");
        assert_eq!(store.check("gh", "api.test", 443, Some("/ok/1")), Ok(()));
        assert!(store.check("gh", "other.test", 443, Some("/ok/1")).is_err());
        assert!(store.check("gh", "api.test", 443, Some("/nope")).is_err());
        assert_eq!(store.check("unknown", "x.test", 1, None), Ok(()));
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        let err = store.get("gh").unwrap_err().to_string();
        assert!(err.contains("lapsed"), "{err}");
        assert!(!err.contains("tok-1"));
        tx.send_replace(Some(Instant::now() + std::time::Duration::from_secs(60)));
        store.replace(2, vec![]);
        assert!(
            store
                .get("gh")
                .unwrap_err()
                .to_string()
                .contains("not delivered")
        );
    }
}
