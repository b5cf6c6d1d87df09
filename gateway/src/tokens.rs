//! Sandbox JWTs: minting and strict verification.
//!
//! A sandbox JWT is EdDSA-signed by the active key, header `typ:
//! palisade-sandbox+jwt` and `kid`, claims `iss`, exact `aud`, `sub` (= the
//! sandbox id), `sandbox_id`, `iat`, `nbf`, `exp`, `jti`, and `pod_uid` when
//! the token descends from a Kubernetes ServiceAccount token (a refresh
//! carries it forward; bootstrap-token descendants never have it). Verification refuses
//! every other `alg` before looking at a key, and allows at most
//! [`MAX_LEEWAY_SECS`] of clock skew.
//!
//! Tokens this process minted or already verified are remembered by the
//! SHA-256 of their exact bytes (a bounded LRU). Presenting one again skips
//! only the Ed25519 signature check, which those bytes have already passed or
//! were made by: the signing key must still be known and every claim check
//! (`exp`, `nbf`, `iss`, `aud`, …) runs again on each use.
//! Must never: accept `alg: none`, HMAC or RSA; log a token; remember a token
//! that failed any check.

use std::num::NonZeroUsize;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_api::{SANDBOX_TOKEN_AUDIENCE, SANDBOX_TOKEN_TYP, WORKLOAD_TOKEN_TYP};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{KeyEntry, KeyError, KeySet};
use crate::principal::SandboxId;

/// Longest accepted token (bytes); ours are ~400.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const MAX_LEEWAY_SECS: u64 = 60;
/// Sandbox tokens remembered as signature-checked (≈ 400 bytes each): a few
/// current tokens per sandbox for thousands of sandboxes.
pub const VERIFIED_TOKENS: usize = 16_384;

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
    /// UID of the pod the token is bound to (ServiceAccount path only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
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
    verified: Arc<VerifiedTokens>,
}

/// A signature-checked token: the key that signed it and its claims.
#[derive(Debug)]
struct Checked {
    kid: String,
    claims: SandboxClaims,
}

/// SHA-256 of a token's bytes → the token, for tokens whose signature this
/// process made or checked. Only [`TokenService::verify`] successes and
/// [`TokenService::mint_bound`] results go in, so a flood of bad tokens
/// cannot evict good ones.
struct VerifiedTokens {
    lru: Mutex<lru::LruCache<[u8; 32], Arc<Checked>>>,
    /// Signature checks done / skipped, for tests.
    #[cfg(test)]
    counts: Mutex<(u64, u64)>,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens").finish_non_exhaustive()
    }
}

impl VerifiedTokens {
    fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            lru: Mutex::new(lru::LruCache::new(capacity)),
            #[cfg(test)]
            counts: Mutex::new((0, 0)),
        }
    }

    fn get(&self, digest: &[u8; 32]) -> Option<Arc<Checked>> {
        self.lru.lock().get(digest).cloned()
    }

    fn put(&self, digest: [u8; 32], checked: Checked) {
        self.lru.lock().put(digest, Arc::new(checked));
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenService {
    pub fn new(keys: Arc<KeySet>, issuer: String, ttl_secs: u64, leeway_secs: u64) -> Self {
        Self::with_verified_capacity(keys, issuer, ttl_secs, leeway_secs, VERIFIED_TOKENS)
    }

    fn with_verified_capacity(
        keys: Arc<KeySet>,
        issuer: String,
        ttl_secs: u64,
        leeway_secs: u64,
        capacity: usize,
    ) -> Self {
        Self {
            keys,
            issuer,
            ttl_secs,
            leeway_secs: leeway_secs.min(MAX_LEEWAY_SECS),
            verified: Arc::new(VerifiedTokens::new(capacity)),
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
        self.mint_bound(id, None, now)
    }

    /// A new token for `id`, bound to the pod `pod_uid` when given (the
    /// ServiceAccount path and its refreshes), with a fresh `jti`.
    pub fn mint_bound(
        &self,
        id: &SandboxId,
        pod_uid: Option<String>,
        now: u64,
    ) -> Result<Minted, KeyError> {
        let claims = SandboxClaims {
            iss: self.issuer.clone(),
            sub: id.to_string(),
            aud: SANDBOX_TOKEN_AUDIENCE.to_owned(),
            sandbox_id: id.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.ttl_secs,
            jti: crate::random_uuid().to_string(),
            pod_uid,
        };
        let (token, kid) = self.sign(&claims)?;
        self.verified.put(
            digest(&token),
            Checked {
                kid: kid.clone(),
                claims: claims.clone(),
            },
        );
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
            jti: crate::random_uuid().to_string(),
        };
        let key = self.keys.active();
        let token = sign_with(&key, WORKLOAD_TOKEN_TYP, &claims)?;
        Ok((token, claims, key.kid().to_owned()))
    }

    /// Sign arbitrary claims with the active key (used by `mint`, and by
    /// tests that need expired or otherwise odd tokens).
    pub fn sign(&self, claims: &SandboxClaims) -> Result<(String, String), KeyError> {
        self.sign_claims(claims)
    }

    /// Sign any serialisable sandbox-token claims (e.g. with `pod_uid`) with
    /// the active key, header `typ: palisade-sandbox+jwt`. Returns the token
    /// and the signing kid.
    pub fn sign_claims<T: Serialize>(&self, claims: &T) -> Result<(String, String), KeyError> {
        let key = self.keys.active();
        let token = sign_with(&key, SANDBOX_TOKEN_TYP, claims)?;
        Ok((token, key.kid().to_owned()))
    }

    /// Verify a presented token; on success the sandbox id is well-formed.
    ///
    /// Order of checks (each refusal has its own [`TokenError`]): size, shape,
    /// `alg` (EdDSA only, before any key is looked at), `typ`, `kid`, the
    /// key, the signature, then the claims: `exp`, `nbf`, `iss`, exact `aud`,
    /// `iat`, `sandbox_id`/`sub`, `jti`. A token whose exact bytes were minted
    /// or verified here before skips the header and signature checks (they
    /// cannot give another answer), but its key must still be known.
    pub fn verify(&self, token: &str, now: u64) -> Result<(SandboxId, SandboxClaims), TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let digest = digest(token);
        if let Some(checked) = self.verified.get(&digest) {
            #[cfg(test)]
            {
                self.verified.counts.lock().1 += 1;
            }
            self.keys
                .get(&checked.kid, now)
                .ok_or(TokenError::UnknownKid)?;
            let id = self.check_claims(&checked.claims, now)?;
            return Ok((id, checked.claims.clone()));
        }
        #[cfg(test)]
        {
            self.verified.counts.lock().0 += 1;
        }
        let (claims, kid): (SandboxClaims, String) = self.verify_with(token, now)?;
        let id = self.check_claims(&claims, now)?;
        self.verified.put(
            digest,
            Checked {
                kid,
                claims: claims.clone(),
            },
        );
        Ok((id, claims))
    }

    /// The claim checks of [`Self::verify`], in its order.
    fn check_claims(&self, claims: &SandboxClaims, now: u64) -> Result<SandboxId, TokenError> {
        let leeway = self.leeway_secs;
        if claims.exp.saturating_add(leeway) <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + leeway {
            return Err(TokenError::NotYetValid);
        }
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if claims.aud != SANDBOX_TOKEN_AUDIENCE {
            return Err(TokenError::WrongAudience);
        }
        if claims.iat > now + leeway {
            return Err(TokenError::NotYetValid);
        }
        let id = SandboxId::parse(&claims.sandbox_id).ok_or(TokenError::InvalidClaims)?;
        if claims.sub != claims.sandbox_id
            || claims.jti.is_empty()
            || claims.pod_uid.as_deref().is_some_and(str::is_empty)
        {
            return Err(TokenError::InvalidClaims);
        }
        Ok(id)
    }

    /// Header and signature checks of a sandbox JWT, then its claims parsed
    /// as `T` (a missing or mistyped claim is [`TokenError::InvalidClaims`])
    /// and the signing kid.
    fn verify_with<T: DeserializeOwned>(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(T, String), TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header = parse_header(h)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::AlgNotAllowed);
        }
        if header.typ.as_deref() != Some(SANDBOX_TOKEN_TYP) {
            return Err(TokenError::WrongTyp);
        }
        let kid = header.kid.ok_or(TokenError::MissingKid)?;
        let key = self.keys.get(&kid, now).ok_or(TokenError::UnknownKid)?;

        // 86 base64url characters; decode_slice wants room for its estimate (66).
        let mut buf = [0u8; 72];
        let signature: [u8; 64] = match URL_SAFE_NO_PAD.decode_slice(sig, &mut buf) {
            Ok(64) => {
                let mut s = [0u8; 64];
                s.copy_from_slice(&buf[..64]);
                s
            }
            Ok(_) | Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                return Err(TokenError::BadSignature);
            }
            Err(base64::DecodeSliceError::DecodeError(_)) => return Err(TokenError::Malformed),
        };
        // The signing input is the token up to the last '.'.
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        if !key.verify(signed, &signature) {
            return Err(TokenError::BadSignature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed)?;
        let claims = serde_json::from_slice(&payload).map_err(|_| TokenError::InvalidClaims)?;
        Ok((claims, kid))
    }
}

/// JWS compact serialisation of `claims` under `key`'s precomputed header
/// for `typ`: one buffer, one signature, no key parsing.
fn sign_with<T: Serialize>(key: &KeyEntry, typ: &str, claims: &T) -> Result<String, KeyError> {
    let header = key
        .encoded_header(typ)
        .ok_or_else(|| KeyError::Encoding(format!("no header for token type {typ}")))?;
    let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Encoding(e.to_string()))?;
    // header . payload . signature (86 characters)
    let mut token = String::with_capacity(header.len() + 2 + payload.len() * 4 / 3 + 4 + 86);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

fn parse_header(h: &str) -> Result<RawHeader, TokenError> {
    // Our headers are ~110 characters; a huge one is malformed, not work.
    if h.len() > 1024 {
        return Err(TokenError::Malformed);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::redb_store::RedbStore;

    const ISS: &str = "https://gw.test:8443";

    fn service() -> (tempfile::TempDir, TokenService) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let keys =
            Arc::new(KeySet::load_or_create(&dir.path().join("keys"), store, 960, 1000).unwrap());
        (dir, TokenService::new(keys, ISS.into(), 900, 60))
    }

    impl TokenService {
        /// (signature checks done, signature checks skipped) so far.
        fn signature_checks(&self) -> (u64, u64) {
            *self.verified.counts.lock()
        }
    }

    #[test]
    fn remembered_tokens_skip_only_the_signature_check() {
        let (_dir, svc) = service();
        let id = SandboxId::generate();
        let minted = svc.mint(&id, 1000).unwrap();
        // Minted here: no signature check, but every claim check, each time.
        assert_eq!(svc.verify(&minted.token, 1000).unwrap().1, minted.claims);
        assert_eq!(svc.signature_checks(), (0, 1));
        assert_eq!(
            svc.verify(&minted.token, 1000 + 900 + 60).err(),
            Some(TokenError::Expired)
        );
        assert_eq!(
            svc.verify(&minted.token, 1000 - 61).err(),
            Some(TokenError::NotYetValid)
        );
        assert_eq!(svc.signature_checks(), (0, 3));
        // Not minted here: checked once, then remembered.
        let other = SandboxClaims {
            jti: "another-jti".into(),
            ..minted.claims.clone()
        };
        let (theirs, _) = svc.sign(&other).unwrap();
        assert_eq!(svc.verify(&theirs, 1000).unwrap().1, other);
        assert_eq!(svc.verify(&theirs, 1000).unwrap().1, other);
        assert_eq!(svc.signature_checks(), (1, 4));
        // One changed signature byte is another token: checked, refused.
        let mut tampered = minted.token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            svc.verify(&tampered, 1000).err(),
            Some(TokenError::BadSignature)
        );
        // A refused token is never remembered, even a well-signed one.
        let expired = SandboxClaims {
            exp: 10,
            ..other.clone()
        };
        let (expired, _) = svc.sign(&expired).unwrap();
        for _ in 0..2 {
            assert_eq!(svc.verify(&expired, 1000).err(), Some(TokenError::Expired));
        }
        assert_eq!(svc.signature_checks(), (4, 4));
        // A remembered token whose key was retired out is refused.
        svc.keys().rotate(1010).unwrap();
        assert!(svc.verify(&minted.token, 1020).is_ok());
        assert_eq!(
            svc.verify(&minted.token, 1970).err(),
            Some(TokenError::UnknownKid)
        );
        assert_eq!(svc.signature_checks(), (4, 6));
    }

    #[test]
    fn remembered_tokens_are_bounded() {
        let (dir, svc) = service();
        let svc = TokenService::with_verified_capacity(svc.keys().clone(), ISS.into(), 900, 60, 2);
        let tokens: Vec<String> = (0..3)
            .map(|_| svc.mint(&SandboxId::generate(), 1000).unwrap().token)
            .collect();
        // The oldest of three fell out of a two-token memory: checked again.
        for t in tokens.iter().rev() {
            assert!(svc.verify(t, 1000).is_ok());
        }
        assert_eq!(svc.signature_checks(), (1, 2));
        drop(dir);
    }

    #[test]
    fn minted_tokens_verify_with_jsonwebtoken_and_back() {
        let (_dir, svc) = service();
        let now = jsonwebtoken::get_current_timestamp();
        let id = SandboxId::generate();
        let minted = svc.mint(&id, now).unwrap();
        // An independent implementation accepts ours...
        let key = svc.keys().active();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_audience(&[SANDBOX_TOKEN_AUDIENCE]);
        v.set_issuer(&[ISS]);
        let data =
            jsonwebtoken::decode::<SandboxClaims>(&minted.token, key.decoding_key(), &v).unwrap();
        assert_eq!(data.claims, minted.claims);
        assert_eq!(data.header.typ.as_deref(), Some(SANDBOX_TOKEN_TYP));
        assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
        // ...and we accept its.
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.typ = Some(SANDBOX_TOKEN_TYP.into());
        h.kid = Some(key.kid().into());
        let theirs = jsonwebtoken::encode(&h, &minted.claims, key.encoding_key()).unwrap();
        let (got, claims) = svc.verify(&theirs, now).unwrap();
        assert_eq!(got, id);
        assert_eq!(claims, minted.claims);
        let (got, _) = svc.verify(&minted.token, now).unwrap();
        assert_eq!(got, id);
    }

    #[test]
    fn every_claim_check_refuses_with_its_own_reason() {
        let (_dir, svc) = service();
        let now = 10_000;
        let id = SandboxId::generate();
        let base = svc.mint(&id, now).unwrap().claims;
        let check = |c: SandboxClaims| svc.verify(&svc.sign(&c).unwrap().0, now).err();
        assert_eq!(check(base.clone()), None);
        // Leeway is 60 s: 59 s past exp still passes, 60 s does not.
        let at_exp = |exp| SandboxClaims {
            exp,
            ..base.clone()
        };
        assert_eq!(check(at_exp(now - 59)), None);
        assert_eq!(check(at_exp(now - 60)), Some(TokenError::Expired));
        let nbf = |nbf| SandboxClaims {
            nbf,
            ..base.clone()
        };
        assert_eq!(check(nbf(now + 60)), None);
        assert_eq!(check(nbf(now + 61)), Some(TokenError::NotYetValid));
        let iat = SandboxClaims {
            iat: now + 61,
            ..base.clone()
        };
        assert_eq!(check(iat), Some(TokenError::NotYetValid));
        let iss = SandboxClaims {
            iss: "https://other".into(),
            ..base.clone()
        };
        assert_eq!(check(iss), Some(TokenError::WrongIssuer));
        // Exact audience: a prefix or a superstring is wrong.
        for aud in ["palisade", "palisade-gateway2", ""] {
            let c = SandboxClaims {
                aud: aud.into(),
                ..base.clone()
            };
            assert_eq!(check(c), Some(TokenError::WrongAudience), "{aud}");
        }
        let sub = SandboxClaims {
            sub: "x".into(),
            ..base.clone()
        };
        assert_eq!(check(sub), Some(TokenError::InvalidClaims));
        let jti = SandboxClaims {
            jti: String::new(),
            ..base.clone()
        };
        assert_eq!(check(jti), Some(TokenError::InvalidClaims));
        let pod = |uid: &str| SandboxClaims {
            pod_uid: Some(uid.into()),
            ..base.clone()
        };
        assert_eq!(check(pod("")), Some(TokenError::InvalidClaims));
        assert_eq!(check(pod("6f0b9c1e")), None);
        let sid = SandboxClaims {
            sandbox_id: "sbx-1".into(),
            sub: "sbx-1".into(),
            ..base.clone()
        };
        assert_eq!(check(sid), Some(TokenError::InvalidClaims));
        // A signed token whose claims lack `exp`.
        let (t, _) = svc
            .sign_claims(&serde_json::json!({"iss": ISS, "sub": id.as_str()}))
            .unwrap();
        assert_eq!(svc.verify(&t, now).err(), Some(TokenError::InvalidClaims));
    }

    #[test]
    fn header_and_signature_checks_come_first() {
        let (_dir, svc) = service();
        let now = 10_000;
        let good = svc.mint(&SandboxId::generate(), now).unwrap().token;
        let parts: Vec<&str> = good.split('.').collect();
        let hdr = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let kid = svc.keys().active().kid().to_owned();
        let with = |h: String| format!("{h}.{}.{}", parts[1], parts[2]);
        let err = |t: &str| svc.verify(t, now).err();
        for alg in ["none", "HS256", "RS256", "ES256", "EdDSA2"] {
            let h = hdr(serde_json::json!({"alg": alg, "typ": SANDBOX_TOKEN_TYP, "kid": kid}));
            assert_eq!(err(&with(h)), Some(TokenError::AlgNotAllowed), "{alg}");
        }
        let h = hdr(serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}));
        assert_eq!(err(&with(h)), Some(TokenError::WrongTyp));
        let h = hdr(serde_json::json!({"alg": "EdDSA", "typ": SANDBOX_TOKEN_TYP}));
        assert_eq!(err(&with(h)), Some(TokenError::MissingKid));
        let h = hdr(serde_json::json!({"alg": "EdDSA", "typ": SANDBOX_TOKEN_TYP, "kid": "x"}));
        assert_eq!(err(&with(h)), Some(TokenError::UnknownKid));
        // The same header re-encoded (other spacing): the signature no
        // longer covers it.
        let h = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg": "EdDSA", "kid": "{kid}", "typ": "{SANDBOX_TOKEN_TYP}"}}"#
        ));
        assert_ne!(h, parts[0]);
        assert_eq!(err(&with(h)), Some(TokenError::BadSignature));
        // Signature: short, long, junk, another payload.
        let short = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]);
        assert_eq!(err(&short), Some(TokenError::BadSignature));
        let long = format!("{good}AAAA");
        assert_eq!(err(&long), Some(TokenError::BadSignature));
        let junk = format!("{}.{}.!!!", parts[0], parts[1]);
        assert_eq!(err(&junk), Some(TokenError::Malformed));
        let other = svc.mint(&SandboxId::generate(), now).unwrap().token;
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert_eq!(err(&swapped), Some(TokenError::BadSignature));
        assert_eq!(err("a.b"), Some(TokenError::Malformed));
        assert_eq!(err(&format!("{good}.x")), Some(TokenError::Malformed));
        assert_eq!(err(&"a".repeat(5000)), Some(TokenError::TooLarge));
    }

    #[test]
    fn retired_key_verifies_until_its_window_ends() {
        let (_dir, svc) = service();
        let id = SandboxId::generate();
        let old = svc.mint(&id, 1000).unwrap();
        svc.keys().rotate(1010).unwrap();
        let new = svc.mint(&id, 1010).unwrap();
        assert_ne!(old.kid, new.kid);
        assert!(svc.verify(&old.token, 1020).is_ok());
        assert!(svc.verify(&new.token, 1020).is_ok());
        // Retention is 960 s from the rotation.
        assert_eq!(
            svc.verify(&old.token, 1970).err(),
            Some(TokenError::UnknownKid)
        );
    }

    #[test]
    fn workload_tokens_are_not_sandbox_tokens() {
        let (_dir, svc) = service();
        let (t, claims, _) = svc
            .mint_workload(&SandboxId::generate(), "https://api.example.com", 1000)
            .unwrap();
        assert_eq!(claims.aud, "https://api.example.com");
        assert_eq!(svc.verify(&t, 1000).err(), Some(TokenError::WrongTyp));
    }
}
