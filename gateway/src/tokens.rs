//! Sandbox JWTs: minting and strict verification.
//!
//! A sandbox JWT is EdDSA-signed by the active key, header `typ:
//! palisade-sandbox+jwt` and `kid`, claims `iss`, exact `aud`, `sub` (= the
//! sandbox id), `sandbox_id`, `iat`, `nbf`, `exp`, `jti`. Verification refuses
//! every other `alg` before looking at a key, and allows at most
//! [`MAX_LEEWAY_SECS`] of clock skew.
//! Must never: accept `alg: none`, HMAC or RSA; log a token.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header, Validation};
use palisade_api::{SANDBOX_TOKEN_AUDIENCE, SANDBOX_TOKEN_TYP, WORKLOAD_TOKEN_TYP};
use serde::{Deserialize, Serialize};

use crate::keys::{KeyError, KeySet};
use crate::principal::SandboxId;

/// Longest accepted token (bytes); ours are ~400.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const MAX_LEEWAY_SECS: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub sandbox_id: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

/// Why a token was refused; `as_str` is the metrics label (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token algorithm is not allowed; only EdDSA is accepted")]
    AlgNotAllowed,
    #[error("token type is not {SANDBOX_TOKEN_TYP}")]
    WrongTyp,
    #[error("token has no key id (kid)")]
    MissingKid,
    #[error("token was signed by a key this gateway does not know (rotated out?); get a new token")]
    UnknownKid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired; refresh it or bootstrap again")]
    Expired,
    #[error("token is not valid yet (check the clock)")]
    NotYetValid,
    #[error("token audience is not {SANDBOX_TOKEN_AUDIENCE}")]
    WrongAudience,
    #[error("token issuer is not this gateway")]
    WrongIssuer,
    #[error("token claims are missing or invalid")]
    InvalidClaims,
}

impl TokenError {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::TooLarge => "too_large",
            TokenError::AlgNotAllowed => "alg_not_allowed",
            TokenError::WrongTyp => "wrong_typ",
            TokenError::MissingKid => "missing_kid",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::InvalidClaims => "invalid_claims",
        }
    }
}

/// The JOSE header as sent, parsed leniently so that every refusal has a
/// precise reason.
#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// Lifetime of workload tokens (the issue caps them at 15 minutes).
pub const WORKLOAD_TOKEN_TTL_SECS: u64 = 5 * 60;

/// Claims of a workload token: a JWT for one upstream audience, minted for a
/// sandbox whose policy names that audience. Same key set, different `typ`,
/// so it can never be replayed to the gateway as a sandbox token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub sandbox_id: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

/// A freshly minted token.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub claims: SandboxClaims,
    pub kid: String,
}

/// Mints and verifies sandbox JWTs with the live key set.
#[derive(Debug, Clone)]
pub struct TokenService {
    keys: Arc<KeySet>,
    issuer: String,
    ttl_secs: u64,
    leeway_secs: u64,
}

impl TokenService {
    pub fn new(keys: Arc<KeySet>, issuer: String, ttl_secs: u64, leeway_secs: u64) -> Self {
        Self {
            keys,
            issuer,
            ttl_secs,
            leeway_secs: leeway_secs.min(MAX_LEEWAY_SECS),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// A new token for `id`, valid from `now` for the configured TTL.
    pub fn mint(&self, id: &SandboxId, now: u64) -> Result<Minted, KeyError> {
        let claims = SandboxClaims {
            iss: self.issuer.clone(),
            sub: id.to_string(),
            aud: SANDBOX_TOKEN_AUDIENCE.to_owned(),
            sandbox_id: id.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.ttl_secs,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let (token, kid) = self.sign(&claims)?;
        Ok(Minted { token, claims, kid })
    }

    /// A workload token for `audience`, valid [`WORKLOAD_TOKEN_TTL_SECS`].
    pub fn mint_workload(
        &self,
        id: &SandboxId,
        audience: &str,
        now: u64,
    ) -> Result<(String, WorkloadClaims, String), KeyError> {
        let claims = WorkloadClaims {
            iss: self.issuer.clone(),
            sub: id.to_string(),
            aud: audience.to_owned(),
            sandbox_id: id.to_string(),
            iat: now,
            nbf: now,
            exp: now + WORKLOAD_TOKEN_TTL_SECS,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let key = self.keys.active();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(WORKLOAD_TOKEN_TYP.to_owned());
        header.kid = Some(key.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key.encoding_key())
            .map_err(|e| KeyError::Encoding(e.to_string()))?;
        Ok((token, claims, key.kid().to_owned()))
    }

    /// Sign arbitrary claims with the active key (used by `mint`, and by
    /// tests that need expired or otherwise odd tokens).
    pub fn sign(&self, claims: &SandboxClaims) -> Result<(String, String), KeyError> {
        let key = self.keys.active();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(SANDBOX_TOKEN_TYP.to_owned());
        header.kid = Some(key.kid().to_owned());
        let token = jsonwebtoken::encode(&header, claims, key.encoding_key())
            .map_err(|e| KeyError::Encoding(e.to_string()))?;
        Ok((token, key.kid().to_owned()))
    }

    /// Verify a presented token; on success the sandbox id is well-formed.
    pub fn verify(&self, token: &str, now: u64) -> Result<(SandboxId, SandboxClaims), TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let header = parse_header(token)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::AlgNotAllowed);
        }
        if header.typ.as_deref() != Some(SANDBOX_TOKEN_TYP) {
            return Err(TokenError::WrongTyp);
        }
        let kid = header.kid.ok_or(TokenError::MissingKid)?;
        let key = self.keys.get(&kid, now).ok_or(TokenError::UnknownKid)?;

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.set_audience(&[SANDBOX_TOKEN_AUDIENCE]);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<SandboxClaims>(token, key.decoding_key(), &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => TokenError::BadSignature,
                    K::ExpiredSignature => TokenError::Expired,
                    K::ImmatureSignature => TokenError::NotYetValid,
                    K::InvalidAudience => TokenError::WrongAudience,
                    K::InvalidIssuer => TokenError::WrongIssuer,
                    K::InvalidAlgorithm | K::InvalidAlgorithmName => TokenError::AlgNotAllowed,
                    K::MissingRequiredClaim(_) | K::Json(_) => TokenError::InvalidClaims,
                    _ => TokenError::Malformed,
                }
            })?;
        let claims = data.claims;
        // jsonwebtoken checked these against its own clock; check against ours too.
        if claims.exp + self.leeway_secs <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + self.leeway_secs || claims.iat > now + self.leeway_secs {
            return Err(TokenError::NotYetValid);
        }
        if claims.aud != SANDBOX_TOKEN_AUDIENCE {
            return Err(TokenError::WrongAudience);
        }
        let id = SandboxId::parse(&claims.sandbox_id).ok_or(TokenError::InvalidClaims)?;
        if claims.sub != claims.sandbox_id || claims.jti.is_empty() {
            return Err(TokenError::InvalidClaims);
        }
        Ok((id, claims))
    }
}

fn parse_header(token: &str) -> Result<RawHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// Non-secret summary of a token for logs and `palisade token inspect`:
/// `sha256:` + the first 12 hex digits of the token's SHA-256.
pub fn fingerprint(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    format!("sha256:{}", &digest[..12])
}
