//! The signing key set: Ed25519 keys, one active signer, retired keys kept
//! for verification until every token they signed has expired, online
//! rotation, persistence (private keys as 0600 PKCS#8 PEM files in
//! `<data-dir>/keys/`, metadata in the [`Store`]), and the JWKS document.
//!
//! `kid` = base64url (no padding) of the SHA-256 of the key's SPKI DER.
//! Must never: log or serve a private key; sign with a retired key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use palisade_api::{KeyInfo, SANDBOX_TOKEN_TYP, WORKLOAD_TOKEN_TYP};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use crate::store::{KeyMaterial, KeyMeta, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {action} key file {path}: {source}; check the --data-dir permissions")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is not an Ed25519 PKCS#8 PEM key ({detail}); restore it from backup or remove its entry by rotating"
    )]
    BadKey { path: PathBuf, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key encoding failed: {0}")]
    Encoding(String),
}

/// One key: its public half for verification, and its private half for signing.
///
/// Everything a sign or a verify needs is parsed once, here, when the key is
/// loaded or created: the expanded Ed25519 signing key, the decompressed
/// verifying key, and the base64url JOSE headers of both token types. The
/// hot path never re-parses a PEM/DER key (jsonwebtoken's RustCrypto backend
/// does, on every call; its keys are kept for interop tests only).
pub struct KeyEntry {
    pub meta: KeyMeta,
    signing: SigningKey,
    verifying: VerifyingKey,
    /// `base64url({"alg":"EdDSA","typ":"palisade-sandbox+jwt","kid":…})`.
    sandbox_header: String,
    /// The same for `palisade-workload+jwt`.
    workload_header: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// The encoded JOSE header of a token of type `typ` signed by `kid`.
fn encoded_header(typ: &str, kid: &str) -> String {
    let header = serde_json::json!({ "alg": "EdDSA", "typ": typ, "kid": kid });
    URL_SAFE_NO_PAD.encode(header.to_string())
}

impl KeyEntry {
    fn from_signing(signing: &SigningKey, meta: KeyMeta) -> Result<Self, KeyError> {
        let pkcs8 = signing
            .to_pkcs8_der()
            .map_err(|e| KeyError::Encoding(e.to_string()))?;
        let verifying = signing.verifying_key();
        let public = verifying.to_bytes();
        Ok(Self {
            sandbox_header: encoded_header(SANDBOX_TOKEN_TYP, &meta.kid),
            workload_header: encoded_header(WORKLOAD_TOKEN_TYP, &meta.kid),
            meta,
            signing: signing.clone(),
            verifying,
            encoding: EncodingKey::from_ed_der(pkcs8.as_bytes()),
            // jsonwebtoken's Ed "DER" decoding key is the raw 32-byte public key.
            decoding: DecodingKey::from_ed_der(&public),
        })
    }

    /// The same key with other metadata (rotation retires the active key).
    fn with_meta(&self, meta: KeyMeta) -> Self {
        Self {
            meta,
            signing: self.signing.clone(),
            verifying: self.verifying,
            sandbox_header: self.sandbox_header.clone(),
            workload_header: self.workload_header.clone(),
            encoding: self.encoding.clone(),
            decoding: self.decoding.clone(),
        }
    }

    pub fn kid(&self) -> &str {
        &self.meta.kid
    }

    /// PKCS#8 PEM of the private key, for a store that holds the keys.
    fn pem(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        let pem = self
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encoding(e.to_string()))?;
        Ok(zeroize::Zeroizing::new(pem.to_string()))
    }
    /// The key in jsonwebtoken's form (interop tests; not the hot path).
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
    /// The key in jsonwebtoken's form (interop tests; not the hot path).
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The encoded JOSE header for a token of type `typ`, if this key signs it.
    pub fn encoded_header(&self, typ: &str) -> Option<&str> {
        match typ {
            SANDBOX_TOKEN_TYP => Some(&self.sandbox_header),
            WORKLOAD_TOKEN_TYP => Some(&self.workload_header),
            _ => None,
        }
    }

    /// Ed25519 signature of `message` (the JWS signing input).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Strict Ed25519 verification (RFC 8032 with canonical `S`, and no
    /// small-order `R` or key).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.verifying
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    /// The RFC 8037 JWK of the public key.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.verifying.as_bytes()),
            "kid": self.meta.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// `kid` of a key: base64url SHA-256 of its SubjectPublicKeyInfo DER.
pub fn kid_of(signing: &SigningKey) -> Result<String, KeyError> {
    let spki = signing
        .verifying_key()
        .to_public_key_der()
        .map_err(|e| KeyError::Encoding(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(spki.as_bytes())))
}

fn generate() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

#[derive(Debug)]
struct Keys {
    active: Arc<KeyEntry>,
    by_kid: BTreeMap<String, Arc<KeyEntry>>,
}

/// The live key set. Cheap to read from every request; rotation swaps it.
#[derive(Debug)]
pub struct KeySet {
    dir: PathBuf,
    store: Arc<dyn Store>,
    /// How long a retired key keeps verifying: the longest token lifetime plus leeway.
    retention_secs: u64,
    state: RwLock<Arc<Keys>>,
    rotating: Mutex<()>,
    /// Set when the store holds the keys (a replicated gateway): the
    /// version last loaded and when, for [`KeySet::refresh`].
    shared: Option<Mutex<Shared>>,
}

#[derive(Debug)]
struct Shared {
    version: String,
    loaded: std::time::Instant,
}

/// An unknown kid makes a shared key set reload at most this often (ten
/// reads a second at worst, whatever kids a caller makes up).
const SHARED_RELOAD_MIN: std::time::Duration = std::time::Duration::from_millis(100);

impl KeySet {
    /// Load every stored key, or create the first one.
    pub fn load_or_create(
        dir: &Path,
        store: Arc<dyn Store>,
        retention_secs: u64,
        now: u64,
    ) -> Result<Self, KeyError> {
        if let Some(material) = store.load_key_material()? {
            return Self::load_shared(dir, store, material, retention_secs, now);
        }
        crate::fsutil::private_dir(dir).map_err(|source| KeyError::Io {
            action: "create directory for",
            path: dir.to_owned(),
            source,
        })?;
        let metas = store.list_keys()?;
        let mut by_kid = BTreeMap::new();
        for meta in metas {
            if meta.verify_until.is_some_and(|t| t <= now) {
                continue; // expired while we were down; pruned below
            }
            let path = dir.join(format!("{}.pem", meta.kid));
            let pem = std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
                action: "read",
                path: path.clone(),
                source,
            })?;
            by_kid.insert(meta.kid.clone(), entry_from_pem(&pem, meta, path)?);
        }
        let active = by_kid
            .values()
            .filter(|k| k.meta.retired_at.is_none())
            .max_by_key(|k| k.meta.created_at)
            .cloned();
        let set = match active {
            Some(active) => Self {
                dir: dir.to_owned(),
                store,
                retention_secs,
                state: RwLock::new(Arc::new(Keys { active, by_kid })),
                rotating: Mutex::new(()),
                shared: None,
            },
            None => {
                let first = Self::new_key(dir, now)?;
                by_kid.insert(first.meta.kid.clone(), first.clone());
                Self {
                    dir: dir.to_owned(),
                    store,
                    retention_secs,
                    state: RwLock::new(Arc::new(Keys {
                        active: first,
                        by_kid,
                    })),
                    rotating: Mutex::new(()),
                    shared: None,
                }
            }
        };
        set.persist_and_prune(&set.snapshot())?;
        Ok(set)
    }

    /// The key set of a store that holds the keys: load it, or (first
    /// replica) create the first key, with a compare-and-swap so that
    /// replicas starting together agree on one.
    fn load_shared(
        dir: &Path,
        store: Arc<dyn Store>,
        mut material: KeyMaterial,
        retention_secs: u64,
        now: u64,
    ) -> Result<Self, KeyError> {
        loop {
            let mut by_kid = entries_of(&material, now)?;
            let version = match active_of(&by_kid) {
                Some(_) => material.version.clone(),
                None => {
                    let (first, pem) = Self::generate_entry(now)?;
                    by_kid.insert(first.meta.kid.clone(), first.clone());
                    let mut pems = material.pems.clone();
                    pems.insert(first.meta.kid.clone(), pem);
                    let metas: Vec<KeyMeta> = by_kid.values().map(|k| k.meta.clone()).collect();
                    match store.store_key_material(&material.version, &metas, &pems)? {
                        Some(version) => version,
                        None => {
                            // Another replica wrote first: use what it wrote.
                            material = reload(store.as_ref())?;
                            continue;
                        }
                    }
                }
            };
            let Some(active) = active_of(&by_kid) else {
                continue;
            };
            return Ok(Self {
                dir: dir.to_owned(),
                store,
                retention_secs,
                state: RwLock::new(Arc::new(Keys { active, by_kid })),
                rotating: Mutex::new(()),
                shared: Some(Mutex::new(Shared {
                    version,
                    loaded: std::time::Instant::now(),
                })),
            });
        }
    }

    /// A shared key set: take in what another replica wrote (a rotation, a
    /// prune). No-op for key files.
    pub fn refresh(&self, now: u64) -> Result<(), KeyError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let material = reload(self.store.as_ref())?;
        let mut shared = shared.lock();
        shared.loaded = std::time::Instant::now();
        if material.version == shared.version {
            return Ok(());
        }
        let by_kid = entries_of(&material, now)?;
        if let Some(active) = active_of(&by_kid) {
            self.install(Keys { active, by_kid });
            shared.version = material.version;
        }
        Ok(())
    }

    /// Write a changed shared key set if nobody wrote since `base`;
    /// `false` when somebody did (the caller reloads and decides again).
    fn store_shared(&self, base: &KeyMaterial, keys: &Keys) -> Result<bool, KeyError> {
        let metas: Vec<KeyMeta> = keys.by_kid.values().map(|k| k.meta.clone()).collect();
        let mut pems = BTreeMap::new();
        for kid in keys.by_kid.keys() {
            if let Some(pem) = base.pems.get(kid) {
                pems.insert(kid.clone(), pem.clone());
            }
        }
        for entry in keys.by_kid.values() {
            if !pems.contains_key(entry.kid()) {
                pems.insert(entry.kid().to_owned(), entry.pem()?);
            }
        }
        match self
            .store
            .store_key_material(&base.version, &metas, &pems)?
        {
            Some(version) => {
                if let Some(shared) = &self.shared {
                    let mut shared = shared.lock();
                    shared.version = version;
                    shared.loaded = std::time::Instant::now();
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn generate_entry(now: u64) -> Result<(Arc<KeyEntry>, zeroize::Zeroizing<String>), KeyError> {
        let signing = generate();
        let kid = kid_of(&signing)?;
        let pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encoding(e.to_string()))?;
        let meta = KeyMeta {
            kid,
            created_at: now,
            retired_at: None,
            verify_until: None,
        };
        let entry = Arc::new(KeyEntry::from_signing(&signing, meta)?);
        Ok((entry, zeroize::Zeroizing::new(pem.to_string())))
    }

    fn new_key(dir: &Path, now: u64) -> Result<Arc<KeyEntry>, KeyError> {
        let signing = generate();
        let kid = kid_of(&signing)?;
        let pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encoding(e.to_string()))?;
        let path = dir.join(format!("{kid}.pem"));
        crate::fsutil::write_private(&path, pem.as_bytes()).map_err(|source| KeyError::Io {
            action: "write",
            path,
            source,
        })?;
        let meta = KeyMeta {
            kid,
            created_at: now,
            retired_at: None,
            verify_until: None,
        };
        Ok(Arc::new(KeyEntry::from_signing(&signing, meta)?))
    }

    fn snapshot(&self) -> Arc<Keys> {
        self.state.read().clone()
    }

    fn install(&self, keys: Keys) {
        let mut g = self.state.write();
        *g = Arc::new(keys);
    }

    /// Write metadata, drop expired keys (metadata and files).
    fn persist_and_prune(&self, keys: &Keys) -> Result<Vec<String>, KeyError> {
        let metas: Vec<KeyMeta> = keys.by_kid.values().map(|k| k.meta.clone()).collect();
        self.store.replace_keys(&metas)?;
        // Remove files of keys no longer listed.
        let mut removed = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(kid) = name.strip_suffix(".pem")
                    && !keys.by_kid.contains_key(kid)
                {
                    let _ = std::fs::remove_file(entry.path());
                    removed.push(kid.to_owned());
                }
            }
        }
        Ok(removed)
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> Arc<KeyEntry> {
        self.snapshot().active.clone()
    }

    /// A key that may verify tokens (active or retired but not yet expired).
    ///
    /// A shared key set that does not know `kid` reloads first (at most
    /// ten times a second): another replica may have rotated a moment ago, and
    /// it stores a new key before it signs with it.
    pub fn get(&self, kid: &str, now: u64) -> Option<Arc<KeyEntry>> {
        let found = self.lookup(kid, now);
        if found.is_some() {
            return found;
        }
        let stale = self
            .shared
            .as_ref()
            .is_some_and(|s| s.lock().loaded.elapsed() >= SHARED_RELOAD_MIN);
        if !stale {
            return None;
        }
        if let Err(e) = self.refresh(now) {
            tracing::warn!(error = %e, "cannot reload the shared signing keys");
        }
        self.lookup(kid, now)
    }

    fn lookup(&self, kid: &str, now: u64) -> Option<Arc<KeyEntry>> {
        self.snapshot()
            .by_kid
            .get(kid)
            .filter(|k| k.meta.verify_until.is_none_or(|t| t > now))
            .cloned()
    }

    /// Make a new key the signer; the old one verifies for `retention_secs` more.
    pub fn rotate(&self, now: u64) -> Result<Arc<KeyEntry>, KeyError> {
        let _guard = self.rotating.lock();
        if self.shared.is_some() {
            loop {
                let base = reload(self.store.as_ref())?;
                let current = Keys::from_material(&base, now)?;
                let (fresh, _) = Self::generate_entry(now)?;
                let keys = self.rotated(&current, fresh.clone(), now);
                if self.store_shared(&base, &keys)? {
                    self.install(keys);
                    return Ok(fresh);
                }
            }
        }
        let current = self.snapshot();
        let fresh = Self::new_key(&self.dir, now)?;
        let keys = self.rotated(&current, fresh.clone(), now);
        self.persist_and_prune(&keys)?;
        self.install(keys);
        Ok(fresh)
    }

    /// `current` with `fresh` as the signer and the old signer retired.
    fn rotated(&self, current: &Keys, fresh: Arc<KeyEntry>, now: u64) -> Keys {
        let mut by_kid = BTreeMap::new();
        for (kid, entry) in &current.by_kid {
            if entry.meta.verify_until.is_some_and(|t| t <= now) {
                continue;
            }
            let entry = if entry.meta.retired_at.is_none() {
                let mut meta = entry.meta.clone();
                meta.retired_at = Some(now);
                meta.verify_until = Some(now + self.retention_secs);
                Arc::new(entry.with_meta(meta))
            } else {
                entry.clone()
            };
            by_kid.insert(kid.clone(), entry);
        }
        by_kid.insert(fresh.meta.kid.clone(), fresh.clone());
        Keys {
            active: fresh,
            by_kid,
        }
    }

    /// Drop retired keys whose verification window has passed.
    pub fn prune(&self, now: u64) -> Result<(), KeyError> {
        let _guard = self.rotating.lock();
        if self.shared.is_some() {
            loop {
                let base = reload(self.store.as_ref())?;
                let current = Keys::from_material(&base, now)?;
                let unexpired = base.keys.len() == current.by_kid.len();
                if unexpired || self.store_shared(&base, &current)? {
                    self.install(current);
                    return Ok(());
                }
            }
        }
        let current = self.snapshot();
        if !current
            .by_kid
            .values()
            .any(|k| k.meta.verify_until.is_some_and(|t| t <= now))
        {
            return Ok(());
        }
        let by_kid = current
            .by_kid
            .iter()
            .filter(|(_, k)| k.meta.verify_until.is_none_or(|t| t > now))
            .map(|(kid, k)| (kid.clone(), k.clone()))
            .collect();
        let keys = Keys {
            active: current.active.clone(),
            by_kid,
        };
        self.persist_and_prune(&keys)?;
        self.install(keys);
        Ok(())
    }

    /// Seconds since the active key was created.
    pub fn active_age(&self, now: u64) -> u64 {
        now.saturating_sub(self.active().meta.created_at)
    }

    pub fn infos(&self) -> Vec<KeyInfo> {
        let keys = self.snapshot();
        keys.by_kid
            .values()
            .map(|k| KeyInfo {
                kid: k.meta.kid.clone(),
                active: k.meta.kid == keys.active.meta.kid,
                created_at: k.meta.created_at,
                retired_at: k.meta.retired_at,
                verify_until: k.meta.verify_until,
            })
            .collect()
    }

    /// `/.well-known/jwks.json`: every key that may still verify.
    pub fn jwks(&self, now: u64) -> serde_json::Value {
        let keys = self.snapshot();
        let list: Vec<_> = keys
            .by_kid
            .values()
            .filter(|k| k.meta.verify_until.is_none_or(|t| t > now))
            .map(|k| k.jwk())
            .collect();
        serde_json::json!({ "keys": list })
    }
}

impl Keys {
    fn from_material(material: &KeyMaterial, now: u64) -> Result<Keys, KeyError> {
        let by_kid = entries_of(material, now)?;
        let active = active_of(&by_kid).ok_or_else(|| KeyError::BadKey {
            path: PathBuf::from(format!("<store>/{}", material.version)),
            detail: "the stored key set has no active key".into(),
        })?;
        Ok(Keys { active, by_kid })
    }
}

/// The newest key that is not retired.
fn active_of(by_kid: &BTreeMap<String, Arc<KeyEntry>>) -> Option<Arc<KeyEntry>> {
    by_kid
        .values()
        .filter(|k| k.meta.retired_at.is_none())
        .max_by_key(|k| k.meta.created_at)
        .cloned()
}

fn reload(store: &dyn Store) -> Result<KeyMaterial, KeyError> {
    store.load_key_material()?.ok_or_else(|| {
        KeyError::Store(crate::store::StoreError::Backend(
            "the store stopped holding the signing keys".into(),
        ))
    })
}

/// The key of a PKCS#8 PEM (read from `path`, named in errors); its kid
/// must be `meta.kid`.
fn entry_from_pem(pem: &str, meta: KeyMeta, path: PathBuf) -> Result<Arc<KeyEntry>, KeyError> {
    let signing = SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::BadKey {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    if kid_of(&signing)? != meta.kid {
        return Err(KeyError::BadKey {
            path,
            detail: "its kid does not match its name".into(),
        });
    }
    Ok(Arc::new(KeyEntry::from_signing(&signing, meta)?))
}

/// Parse every unexpired key of a store that holds them.
fn entries_of(
    material: &KeyMaterial,
    now: u64,
) -> Result<BTreeMap<String, Arc<KeyEntry>>, KeyError> {
    let mut by_kid = BTreeMap::new();
    for meta in &material.keys {
        if meta.verify_until.is_some_and(|t| t <= now) {
            continue;
        }
        let path = PathBuf::from(format!("<store>/{}.pem", meta.kid));
        let pem = material
            .pems
            .get(&meta.kid)
            .ok_or_else(|| KeyError::BadKey {
                path: path.clone(),
                detail: "listed in the metadata but missing".into(),
            })?;
        by_kid.insert(meta.kid.clone(), entry_from_pem(pem, meta.clone(), path)?);
    }
    Ok(by_kid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::RedbStore;

    fn setup() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        (dir, store)
    }

    #[test]
    fn kid_is_sha256_of_spki_der() {
        let k = generate();
        // RFC 8410 SPKI for Ed25519: fixed 12-byte prefix + the 32-byte key.
        let mut spki = hex::decode("302a300506032b6570032100").unwrap();
        spki.extend_from_slice(k.verifying_key().as_bytes());
        assert_eq!(
            kid_of(&k).unwrap(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(&spki))
        );
    }

    #[test]
    fn rotation_keeps_old_key_for_verification_then_prunes_it() {
        let (dir, store) = setup();
        let keys_dir = dir.path().join("keys");
        let set = KeySet::load_or_create(&keys_dir, store.clone(), 100, 1000).unwrap();
        let first = set.active();
        let second = set.rotate(1010).unwrap();
        assert_ne!(first.kid(), second.kid());
        assert_eq!(set.active().kid(), second.kid());
        assert!(
            set.get(first.kid(), 1050).is_some(),
            "old key still verifies"
        );
        assert!(set.get(first.kid(), 1110).is_none(), "window over");
        assert_eq!(set.jwks(1050)["keys"].as_array().unwrap().len(), 2);
        set.prune(1111).unwrap();
        assert_eq!(set.infos().len(), 1);
        assert!(!keys_dir.join(format!("{}.pem", first.kid())).exists());
        // Files are 0600 and survive a restart with the same active key.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys_dir.join(format!("{}.pem", second.kid())))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(set);
        let again = KeySet::load_or_create(&keys_dir, store, 100, 1200).unwrap();
        assert_eq!(again.active().kid(), second.kid());
    }

    #[test]
    fn restart_keeps_retired_key_until_its_window_ends() {
        let (dir, store) = setup();
        let keys_dir = dir.path().join("keys");
        let set = KeySet::load_or_create(&keys_dir, store.clone(), 100, 1000).unwrap();
        let first = set.active();
        set.rotate(1000).unwrap();
        drop(set);
        let again = KeySet::load_or_create(&keys_dir, store, 100, 1050).unwrap();
        assert!(again.get(first.kid(), 1050).is_some());
        assert_eq!(again.infos().len(), 2);
    }

    #[test]
    fn tampered_key_file_is_refused_with_a_clear_error() {
        let (dir, store) = setup();
        let keys_dir = dir.path().join("keys");
        let set = KeySet::load_or_create(&keys_dir, store.clone(), 100, 1000).unwrap();
        let kid = set.active().kid().to_owned();
        drop(set);
        std::fs::write(keys_dir.join(format!("{kid}.pem")), "garbage").unwrap();
        let err = KeySet::load_or_create(&keys_dir, store, 100, 1000).unwrap_err();
        assert!(
            err.to_string().contains("not an Ed25519 PKCS#8 PEM key"),
            "{err}"
        );
    }
}
