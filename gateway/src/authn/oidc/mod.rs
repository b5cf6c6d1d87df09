//! OIDC bearer tokens of users and platform controllers, from one
//! configured issuer.
//!
//! Keys come from the issuer's JWKS, fetched over HTTPS (rustls; an extra CA
//! file may be trusted) and cached: refreshed when older than the refresh
//! interval, and on an unknown `kid` at most once per minimum refresh
//! interval (so a stream of forged kids cannot hammer the issuer). Fetches
//! are time-limited and size-capped; a failed refresh keeps the last good
//! keys. Or keys come from a static JWKS/PEM file read at start-up.
//!
//! Accepted: `RS256`, `ES256`, `EdDSA` only (never `none` or HMAC), with the
//! key's own algorithm; exact `iss`; `aud` equal to (or, as an array,
//! containing exactly) the configured audience; `exp` required and `nbf`
//! honoured with the gateway's leeway (≤ 60 s). Claims map to a
//! [`Principal::User`] (roles from a roles claim and/or group → role
//! mappings) or a [`Principal::Platform`] (namespaces from a claim).
//!
//! Must never: log or echo a token; accept a symmetric key from a JWKS;
//! answer 5xx for a bad token.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::{Map, Value};

mod config;

pub use config::{
    DEFAULT_OIDC_FETCH_TIMEOUT, DEFAULT_OIDC_JWKS_MIN_REFRESH, DEFAULT_OIDC_JWKS_REFRESH,
    GroupRoles, JwksSource, OidcConfig, OidcPrincipalKind,
};

use super::failure::AuthFailure;
use crate::principal::{Principal, Role, valid_label};

/// Authenticator label of OIDC tokens (metrics, logs).
pub const AUTHENTICATOR_OIDC: &str = "oidc";
/// Longest accepted token (bytes); IdP tokens with many groups are large.
pub const MAX_OIDC_TOKEN_BYTES: usize = 16 * 1024;
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one JWKS.
const MAX_JWKS_KEYS: usize = 64;
/// Longest accepted subject.
const MAX_SUBJECT_LEN: usize = 256;

/// One verification key.
struct OidcKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The current key set and when it was fetched.
struct KeyMap {
    keys: Vec<OidcKey>,
    fetched_at: Option<Instant>,
}

enum Source {
    Url {
        url: http::Uri,
        tls: Arc<rustls::ClientConfig>,
    },
    Static,
}

/// The OIDC authenticator (one issuer).
pub struct OidcAuthenticator {
    settings: OidcConfig,
    leeway: u64,
    source: Source,
    keys: RwLock<Arc<KeyMap>>,
    /// Single flight for JWKS fetches, and when the last one started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for OidcAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuthenticator")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

fn unauthenticated(reason: &'static str, message: impl Into<String>) -> AuthFailure {
    AuthFailure::with_status(
        AUTHENTICATOR_OIDC,
        reason,
        StatusCode::UNAUTHORIZED,
        message,
    )
}

#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The algorithm a JWK verifies, or `None` for keys we never use
/// (symmetric, encryption, other curves, other algorithms).
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Some(by_type),
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Some(by_type),
        Some(KeyAlgorithm::EdDSA) if by_type == Algorithm::EdDSA => Some(by_type),
        Some(_) => None,
    }
}

/// Parse a JWKS document, keeping only usable signature keys.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<OidcKey>, String> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = Vec::new();
    for raw in doc.keys.into_iter().take(MAX_JWKS_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue; // a key type we do not know
        };
        let Some(alg) = jwk_algorithm(&jwk) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(OidcKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(out)
}

/// Keys from a static file: a JWKS JSON document, or PEM public keys
/// (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA; no kid).
fn load_static(path: &Path) -> anyhow::Result<Vec<OidcKey>> {
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read --oidc-jwks-file {}: {e}; check the path",
            path.display()
        )
    })?;
    let keys = if bytes.trim_ascii_start().starts_with(b"{") {
        parse_jwks(&bytes)
            .map_err(|e| anyhow::anyhow!("--oidc-jwks-file {}: {e}", path.display()))?
    } else {
        let text = String::from_utf8_lossy(&bytes);
        let mut keys = Vec::new();
        for block in text.split("-----END PUBLIC KEY-----") {
            let Some(start) = block.find("-----BEGIN PUBLIC KEY-----") else {
                continue;
            };
            let pem = format!("{}-----END PUBLIC KEY-----\n", &block[start..]);
            let key = if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                (Algorithm::ES256, k)
            } else if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
                (Algorithm::EdDSA, k)
            } else {
                anyhow::bail!(
                    "--oidc-jwks-file {}: a PUBLIC KEY block is not an RSA, P-256 or Ed25519 key",
                    path.display()
                );
            };
            keys.push(OidcKey {
                kid: None,
                alg: key.0,
                key: key.1,
            });
        }
        keys
    };
    if keys.is_empty() {
        anyhow::bail!(
            "--oidc-jwks-file {} holds no usable RS256/ES256/EdDSA signature key",
            path.display()
        );
    }
    Ok(keys)
}

fn client_tls(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read --oidc-jwks-ca-file {}: {e}", path.display())
            })?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert
                    .map_err(|e| anyhow::anyhow!("--oidc-jwks-ca-file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("--oidc-jwks-ca-file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                anyhow::bail!(
                    "--oidc-jwks-ca-file {} holds no PEM certificate",
                    path.display()
                );
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GET `url` over HTTPS: status 200 and at most [`MAX_JWKS_BYTES`], within `timeout`.
async fn fetch(
    url: &http::Uri,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Bytes, String> {
    let work = async {
        let host = url.host().ok_or("the JWKS URL has no host")?;
        let port = url.port_u16().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((bare, port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|e| format!("bad host name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(conn);
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let authority = url.authority().map_or(host, |a| a.as_str());
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| format!("body: {e} (limit {MAX_JWKS_BYTES} bytes)"))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())))
}

/// A claim as a list of strings (a string, or an array of strings).
fn strings(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

impl OidcAuthenticator {
    /// Build from the configuration; a static key file is read now.
    pub fn load(settings: OidcConfig, leeway: Duration) -> anyhow::Result<Self> {
        let (source, keys) = match &settings.jwks {
            JwksSource::Url { url, ca_file } => {
                let url: http::Uri = url
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--oidc-jwks-url `{url}`: {e}"))?;
                (
                    Source::Url {
                        url,
                        tls: client_tls(ca_file.as_deref())?,
                    },
                    KeyMap {
                        keys: Vec::new(),
                        fetched_at: None,
                    },
                )
            }
            JwksSource::File(path) => (
                Source::Static,
                KeyMap {
                    keys: load_static(path)?,
                    fetched_at: Some(Instant::now()),
                },
            ),
        };
        Ok(Self {
            leeway: leeway.as_secs().min(crate::tokens::MAX_LEEWAY_SECS),
            settings,
            source,
            keys: RwLock::new(Arc::new(keys)),
            refresh: tokio::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    fn snapshot(&self) -> Arc<KeyMap> {
        self.keys.read().clone()
    }

    /// Fetch the JWKS unless another fetch started less than `min_gap`
    /// ago (then just wait for it). A failed fetch keeps the old keys.
    async fn refresh(&self, min_gap: Duration) {
        let Source::Url { url, tls } = &self.source else {
            return;
        };
        let mut last = self.refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < min_gap) {
            return;
        }
        *last = Some(Instant::now());
        match fetch(url, tls, self.settings.fetch_timeout).await {
            Ok(body) => match parse_jwks(&body) {
                Ok(keys) => {
                    tracing::info!(
                        issuer = %self.settings.issuer,
                        keys = keys.len(),
                        "OIDC JWKS refreshed"
                    );
                    let map = Arc::new(KeyMap {
                        keys,
                        fetched_at: Some(Instant::now()),
                    });
                    *self.keys.write() = map;
                }
                Err(e) => tracing::warn!(issuer = %self.settings.issuer, error = %e,
                    "OIDC JWKS refresh failed; keeping the previous keys"),
            },
            Err(e) => tracing::warn!(issuer = %self.settings.issuer, error = %e,
                "OIDC JWKS fetch failed; keeping the previous keys"),
        }
    }

    fn find(&self, map: &KeyMap, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let mut candidates = map
            .keys
            .iter()
            .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid));
        let first = candidates.next()?;
        // Without a kid the key must be unambiguous.
        if kid.is_none() && candidates.next().is_some() {
            return None;
        }
        Some(first.key.clone())
    }

    /// Verify a bearer token from the issuer and map it to a principal.
    pub async fn authenticate(&self, token: &str, now: u64) -> Result<Principal, AuthFailure> {
        if token.len() > MAX_OIDC_TOKEN_BYTES {
            return Err(unauthenticated(
                "too_large",
                "the bearer token is too large",
            ));
        }
        let header: RawHeader = token
            .split('.')
            .next()
            .filter(|h| h.len() <= 4096)
            .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or_else(|| unauthenticated("malformed", "the bearer token is not a JWT"))?;
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            _ => {
                return Err(unauthenticated(
                    "alg_not_allowed",
                    "token algorithm is not allowed; RS256, ES256 and EdDSA are accepted",
                ));
            }
        };
        let kid = header.kid.as_deref();
        // Keys older than the refresh interval (or never fetched): refresh first.
        let map = self.snapshot();
        let stale = map
            .fetched_at
            .is_none_or(|t| t.elapsed() >= self.settings.refresh_interval);
        if stale {
            self.refresh(self.settings.min_refresh_interval).await;
        }
        let mut key = self.find(&self.snapshot(), kid, alg);
        if key.is_none() && kid.is_some() && !stale {
            // Perhaps the issuer rotated: refresh, rate-limited.
            self.refresh(self.settings.min_refresh_interval).await;
            key = self.find(&self.snapshot(), kid, alg);
        }
        let Some(key) = key else {
            if self.snapshot().fetched_at.is_none() {
                return Err(AuthFailure::with_status(
                    AUTHENTICATOR_OIDC,
                    "jwks_unavailable",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the OIDC issuer's keys could not be fetched; retry later",
                ));
            }
            return Err(if kid.is_none() {
                unauthenticated("missing_kid", "token has no key id (kid)")
            } else {
                unauthenticated(
                    "unknown_kid",
                    "token was signed by a key the issuer does not publish",
                )
            });
        };

        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => {
                        unauthenticated("bad_signature", "token signature is invalid")
                    }
                    K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                        unauthenticated("alg_not_allowed", "token algorithm does not match the key")
                    }
                    K::Json(_) => {
                        unauthenticated("invalid_claims", "token claims are not a JSON object")
                    }
                    _ => unauthenticated("malformed", "the bearer token is not a valid JWT"),
                }
            })?
            .claims;
        self.check_claims(&claims, now)?;
        self.principal(&claims)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), AuthFailure> {
        let time = |name: &str| claims.get(name).and_then(Value::as_u64);
        let leeway = self.leeway;
        let exp = time("exp")
            .ok_or_else(|| unauthenticated("invalid_claims", "token has no numeric exp"))?;
        if exp.saturating_add(leeway) <= now {
            return Err(unauthenticated(
                "expired",
                "token has expired; sign in again",
            ));
        }
        if claims.contains_key("nbf") {
            let nbf = time("nbf")
                .ok_or_else(|| unauthenticated("invalid_claims", "token nbf is not a number"))?;
            if nbf > now + leeway {
                return Err(unauthenticated(
                    "not_yet_valid",
                    "token is not valid yet (check the clock)",
                ));
            }
        }
        if claims.get("iss").and_then(Value::as_str) != Some(self.settings.issuer.as_str()) {
            return Err(unauthenticated(
                "wrong_issuer",
                "token issuer is not the configured OIDC issuer",
            ));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.settings.audience,
            Some(Value::Array(list)) => list
                .iter()
                .any(|a| a.as_str() == Some(self.settings.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(unauthenticated(
                "wrong_audience",
                "token audience does not name this gateway",
            ));
        }
        Ok(())
    }

    /// Claims → principal, by the configured mapping.
    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthFailure> {
        let s = &self.settings;
        let subject = claims
            .get(&s.subject_claim)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty() && v.len() <= MAX_SUBJECT_LEN)
            .ok_or_else(|| {
                unauthenticated(
                    "invalid_claims",
                    format!("token has no usable `{}` claim", s.subject_claim),
                )
            })?
            .to_owned();
        match s.principal {
            OidcPrincipalKind::User => {
                let mut roles: Vec<Role> = Vec::new();
                if let Some(claim) = &s.roles_claim {
                    for v in strings(claims, claim) {
                        if let Ok(r) = serde_json::from_value::<Role>(Value::String(v)) {
                            roles.push(r);
                        }
                    }
                }
                for group in strings(claims, &s.groups_claim) {
                    if let Some(mapped) = s.group_roles.get(&group) {
                        roles.extend(mapped.iter().copied());
                    }
                }
                roles.sort_by_key(|r| *r as u8);
                roles.dedup();
                Ok(Principal::User { subject, roles })
            }
            OidcPrincipalKind::Platform => {
                let mut namespaces: Vec<String> = strings(claims, &s.namespaces_claim)
                    .into_iter()
                    .filter(|n| valid_label(n))
                    .collect();
                namespaces.sort();
                namespaces.dedup();
                Ok(Principal::Platform {
                    subject,
                    namespaces,
                })
            }
        }
    }
}
