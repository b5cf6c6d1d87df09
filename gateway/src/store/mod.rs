//! Persistent state behind the [`Store`] trait: sandboxes, policies with
//! store-wide revisions, one-time bootstrap tokens, key metadata.
//!
//! The embedded implementation ([`redb_store::RedbStore`]) is the default; the
//! Kubernetes issue adds one backed by custom resources.
//! Secrets (`/v1/secrets`) are the one kind of record whose values are
//! sensitive: they live only in the 0600 store file, and [`SecretRecord`]'s
//! `Debug` and every error about them name the secret, never a value.
//!
//! Must never: store a bootstrap token itself (only its SHA-256), or a private key
//! (those live in 0600 files beside the database, see [`crate::keys`]).

pub mod kube_store;
pub mod redb_store;

use palisade_api::{Sandbox, StoredPolicy};
use serde::{Deserialize, Serialize};

use crate::principal::SandboxId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store error: {0}; check that the data dir is writable and not full")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// A one-time bootstrap token, keyed by the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    pub sandbox_id: SandboxId,
    pub expires_at: u64,
}

/// Metadata of one signing key; the private key is a file named after `kid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    pub kid: String,
    pub created_at: u64,
    /// `None` while it is the active signer.
    pub retired_at: Option<u64>,
    /// After this it is removed; `None` while active.
    pub verify_until: Option<u64>,
}

/// Who may use a secret and where it may be sent, as the admin wrote it
/// (validated on write; parsed by [`crate::sessions::credentials::Allowance`]).
/// Empty (also for secrets stored before allowances existed): usable by no policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretAllowance {
    /// Namespaces whose policies may use the secret.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Policies that may use it: `NAME` (cluster-wide) or `NAMESPACE/NAME`.
    #[serde(default)]
    pub policies: Vec<String>,
    /// `HOST` or `HOST:PORT` the secret may be sent to.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// A stored secret: key → value, with a store-wide secret revision.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    pub data: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub allowance: SecretAllowance,
    pub revision: u64,
    pub updated_at: u64,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("allowance", &self.allowance)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl SecretRecord {
    /// Names, key names and fingerprints: what may be shown.
    pub fn info(&self) -> palisade_api::session::SecretInfo {
        palisade_api::session::SecretInfo {
            name: self.name.clone(),
            keys: self
                .data
                .iter()
                .map(|(key, value)| palisade_api::session::SecretKeyInfo {
                    key: key.clone(),
                    fingerprint: fingerprint(value),
                })
                .collect(),
            allowed_namespaces: self.allowance.namespaces.clone(),
            allowed_policies: self.allowance.policies.clone(),
            allowed_hosts: self.allowance.hosts.clone(),
            revision: self.revision,
            updated_at: self.updated_at,
        }
    }
}

/// `sha256:<hex>` of a secret value: safe to log and to list.
pub fn fingerprint(value: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(value.as_bytes())))
}

/// A condition on the current version of a policy (HTTP `If-Match` /
/// `If-None-Match: *`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// The current ETag must be this one.
    IfMatch(String),
    /// The policy must not exist yet.
    IfNoneMatchAny,
}

impl Precondition {
    pub fn holds(&self, current: Option<&str>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::IfMatch(etag) => current == Some(etag.as_str()),
            Precondition::IfNoneMatchAny => current.is_none(),
        }
    }
}

/// What a bootstrap-token lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapLookup {
    Valid(BootstrapRecord),
    Expired,
    Unknown,
}

pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Create a sandbox and its bootstrap token in one transaction.
    fn create_sandbox(
        &self,
        sandbox: &Sandbox,
        bootstrap_hash: &str,
        bootstrap: &BootstrapRecord,
    ) -> Result<(), StoreError>;
    fn get_sandbox(&self, id: &SandboxId) -> Result<Option<Sandbox>, StoreError>;
    /// Whether sandbox `id` exists, answered from memory with no I/O (so
    /// callable on async threads); `None` when this store keeps no such
    /// index and the caller must use `get_sandbox`. See
    /// [`crate::authn::live_sandboxes`].
    fn sandbox_exists_cached(&self, _id: &SandboxId) -> Option<bool> {
        None
    }
    fn list_sandboxes(&self) -> Result<Vec<Sandbox>, StoreError>;
    /// Delete a sandbox and every bootstrap token of it; false if it did not exist.
    fn delete_sandbox(&self, id: &SandboxId) -> Result<bool, StoreError>;

    /// Store a (validated) cluster-wide policy document under a new store-wide revision.
    fn put_policy(&self, name: &str, document: &str, now: u64) -> Result<StoredPolicy, StoreError> {
        match self.put_policy_if(name, None, document, now, &Precondition::None)? {
            Ok(stored) => Ok(stored),
            Err(_) => Err(StoreError::Backend("unconditional write refused".into())),
        }
    }
    /// Store a policy of `namespace` (`None`: cluster-wide) only if
    /// `precondition` holds, checked in the same transaction;
    /// `Ok(Err(current_etag))` when it does not. Policy names are one
    /// key space across namespaces.
    fn put_policy_if(
        &self,
        name: &str,
        namespace: Option<&str>,
        document: &str,
        now: u64,
        precondition: &Precondition,
    ) -> Result<Result<StoredPolicy, Option<String>>, StoreError>;
    fn get_policy(&self, name: &str) -> Result<Option<StoredPolicy>, StoreError>;

    fn lookup_bootstrap(&self, hash: &str, now: u64) -> Result<BootstrapLookup, StoreError>;
    /// Atomically remove a valid bootstrap token and return its sandbox;
    /// `None` if it was unknown, expired or already used.
    fn consume_bootstrap(&self, hash: &str, now: u64) -> Result<Option<SandboxId>, StoreError>;

    /// Remove expired bootstrap tokens; returns how many.
    fn prune_bootstrap(&self, now: u64) -> Result<usize, StoreError>;

    /// Create or replace a secret and its allowance under a new store-wide
    /// secret revision.
    fn put_secret(
        &self,
        name: &str,
        data: &std::collections::BTreeMap<String, String>,
        allowance: &SecretAllowance,
        now: u64,
    ) -> Result<SecretRecord, StoreError>;
    fn get_secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError>;
    fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError>;
    /// False if it did not exist.
    fn delete_secret(&self, name: &str) -> Result<bool, StoreError>;

    fn list_keys(&self) -> Result<Vec<KeyMeta>, StoreError>;
    /// Replace the whole key metadata set in one transaction.
    fn replace_keys(&self, keys: &[KeyMeta]) -> Result<(), StoreError>;

    /// The signing keys, private halves included, when this store holds
    /// them (a replicated gateway: every replica signs and verifies with the
    /// same keys); `None` when they are files beside the store (the
    /// embedded store, see [`crate::keys`]).
    fn load_key_material(&self) -> Result<Option<KeyMaterial>, StoreError> {
        Ok(None)
    }
    /// Replace metadata and private keys in one write, only if the stored
    /// set is still `expected` (its [`KeyMaterial::version`]); `Ok(None)`
    /// when another writer changed it first (reload and decide again).
    fn store_key_material(
        &self,
        _expected: &str,
        _keys: &[KeyMeta],
        _pems: &std::collections::BTreeMap<String, zeroize::Zeroizing<String>>,
    ) -> Result<Option<String>, StoreError> {
        Err(StoreError::Backend(
            "this store keeps no private keys; they are files in the data dir".into(),
        ))
    }
}

/// Signing keys as a store that holds them returns them.
pub struct KeyMaterial {
    /// Opaque: changes with every write (a resourceVersion).
    pub version: String,
    pub keys: Vec<KeyMeta>,
    /// PKCS#8 PEM by kid.
    pub pems: std::collections::BTreeMap<String, zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("version", &self.version)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Whether a sandbox of `sandbox_ns` may run a policy of `policy_ns`: one of
/// its own namespace, or a cluster-wide one (`None`). A sandbox without a
/// namespace runs only cluster-wide policies.
pub fn policy_usable_by(policy_ns: Option<&str>, sandbox_ns: Option<&str>) -> bool {
    policy_ns.is_none() || policy_ns == sandbox_ns
}

/// `"r<revision>-<first 16 hex of sha256(document)>"`, quoted as an HTTP ETag.
pub fn etag(revision: u64, document: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(document.as_bytes()));
    format!("\"r{revision}-{}\"", &digest[..16])
}
