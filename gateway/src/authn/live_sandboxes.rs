//! The set of sandboxes that exist, held in memory, so that the check every
//! sandbox-authenticated request makes — "does this token's sandbox still
//! exist?" (deleting a sandbox revokes its tokens at once) — is a hash lookup
//! on the async thread instead of a store read on a blocking thread.
//!
//! [`LiveSandboxStore`] wraps the real [`Store`]: it loads every sandbox id
//! at start-up and sees every create and delete, so it follows the store.
//! That holds only while this process is the store's one writer — true of
//! the embedded store (redb locks its file). A store that others write (e.g.
//! Kubernetes custom resources) must answer
//! [`Store::sandbox_exists_cached`] from its own watch, or not at all.
//!
//! [`sandbox_exists`] is the check itself, for any store.
//!
//! Must never: answer "exists" for a sandbox whose delete has begun. A
//! delete takes the id out of the set *before* the store delete, so a token
//! is refused from the moment the delete starts; the id comes back only if
//! the store still has the record after a failed delete.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use palisade_api::{Sandbox, StoredPolicy};
use parking_lot::RwLock;

use crate::principal::SandboxId;
use crate::store::{
    BootstrapLookup, BootstrapRecord, KeyMeta, Precondition, SecretAllowance, SecretRecord, Store,
    StoreError,
};

/// Whether sandbox `id` still exists: the store's memory index when it has
/// one (no blocking-thread hop: this runs on every sandbox-authenticated
/// request), else a store read on a blocking thread. `Err` when the store
/// failed.
pub async fn sandbox_exists(store: &Arc<dyn Store>, id: &SandboxId) -> Result<bool, ()> {
    if let Some(exists) = store.sandbox_exists_cached(id) {
        return Ok(exists);
    }
    let store = store.clone();
    let id = id.clone();
    tokio::task::spawn_blocking(move || store.get_sandbox(&id))
        .await
        .map_err(|_| ())?
        .map(|s| s.is_some())
        .map_err(|_| ())
}

/// A [`Store`] that also knows, from memory, which sandboxes exist.
#[derive(Debug)]
pub struct LiveSandboxStore {
    inner: Arc<dyn Store>,
    live: RwLock<HashSet<SandboxId>>,
}

impl LiveSandboxStore {
    /// Wrap `inner`, loading the ids of every sandbox it holds.
    pub fn load(inner: Arc<dyn Store>) -> Result<Self, StoreError> {
        let live = inner
            .list_sandboxes()?
            .into_iter()
            .map(|s| s.id)
            .collect::<HashSet<_>>();
        Ok(Self {
            inner,
            live: RwLock::new(live),
        })
    }

    /// Whether `id` exists (memory only).
    pub fn contains(&self, id: &SandboxId) -> bool {
        self.live.read().contains(id)
    }

    /// How many sandboxes exist (memory only).
    pub fn len(&self) -> usize {
        self.live.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_set<T>(&self, f: impl FnOnce(&mut HashSet<SandboxId>) -> T) -> T {
        f(&mut self.live.write())
    }
}

impl Store for LiveSandboxStore {
    fn create_sandbox(
        &self,
        sandbox: &Sandbox,
        bootstrap_hash: &str,
        bootstrap: &BootstrapRecord,
    ) -> Result<(), StoreError> {
        self.inner
            .create_sandbox(sandbox, bootstrap_hash, bootstrap)?;
        // After the commit: no token for it can exist before this returns.
        self.with_set(|set| set.insert(sandbox.id.clone()));
        Ok(())
    }

    fn get_sandbox(&self, id: &SandboxId) -> Result<Option<Sandbox>, StoreError> {
        self.inner.get_sandbox(id)
    }

    fn sandbox_exists_cached(&self, id: &SandboxId) -> Option<bool> {
        Some(self.contains(id))
    }

    fn list_sandboxes(&self) -> Result<Vec<Sandbox>, StoreError> {
        self.inner.list_sandboxes()
    }

    fn delete_sandbox(&self, id: &SandboxId) -> Result<bool, StoreError> {
        // Fail closed: refuse its tokens from the moment the delete begins.
        let was_live = self.with_set(|set| set.remove(id));
        match self.inner.delete_sandbox(id) {
            Ok(existed) => Ok(existed),
            Err(e) => {
                // The delete failed: put the id back only if the record is
                // provably still there.
                if was_live && matches!(self.inner.get_sandbox(id), Ok(Some(_))) {
                    self.with_set(|set| set.insert(id.clone()));
                }
                Err(e)
            }
        }
    }

    fn put_policy_if(
        &self,
        name: &str,
        namespace: Option<&str>,
        document: &str,
        now: u64,
        precondition: &Precondition,
    ) -> Result<Result<StoredPolicy, Option<String>>, StoreError> {
        self.inner
            .put_policy_if(name, namespace, document, now, precondition)
    }

    fn get_policy(&self, name: &str) -> Result<Option<StoredPolicy>, StoreError> {
        self.inner.get_policy(name)
    }

    fn lookup_bootstrap(&self, hash: &str, now: u64) -> Result<BootstrapLookup, StoreError> {
        self.inner.lookup_bootstrap(hash, now)
    }

    fn consume_bootstrap(&self, hash: &str, now: u64) -> Result<Option<SandboxId>, StoreError> {
        self.inner.consume_bootstrap(hash, now)
    }

    fn prune_bootstrap(&self, now: u64) -> Result<usize, StoreError> {
        self.inner.prune_bootstrap(now)
    }

    fn put_secret(
        &self,
        name: &str,
        data: &BTreeMap<String, String>,
        allowance: &SecretAllowance,
        now: u64,
    ) -> Result<SecretRecord, StoreError> {
        self.inner.put_secret(name, data, allowance, now)
    }

    fn get_secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        self.inner.get_secret(name)
    }

    fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.inner.list_secrets()
    }

    fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_secret(name)
    }

    fn list_keys(&self) -> Result<Vec<KeyMeta>, StoreError> {
        self.inner.list_keys()
    }

    fn replace_keys(&self, keys: &[KeyMeta]) -> Result<(), StoreError> {
        self.inner.replace_keys(keys)
    }

    fn load_key_material(&self) -> Result<Option<crate::store::KeyMaterial>, StoreError> {
        self.inner.load_key_material()
    }

    fn store_key_material(
        &self,
        expected: &str,
        keys: &[KeyMeta],
        pems: &BTreeMap<String, zeroize::Zeroizing<String>>,
    ) -> Result<Option<String>, StoreError> {
        self.inner.store_key_material(expected, keys, pems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::RedbStore;

    fn sandbox(id: &SandboxId) -> Sandbox {
        Sandbox {
            id: id.clone(),
            spec: palisade_api::SandboxSpec {
                name: "demo".into(),
                ..Default::default()
            },
            owner: "user:test".into(),
            created_at: 1,
        }
    }

    fn boot(id: &SandboxId) -> BootstrapRecord {
        BootstrapRecord {
            sandbox_id: id.clone(),
            expires_at: u64::MAX,
        }
    }

    #[test]
    fn follows_creates_deletes_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (SandboxId::generate(), SandboxId::generate());
        {
            let store =
                LiveSandboxStore::load(Arc::new(RedbStore::open(dir.path()).unwrap())).unwrap();
            assert!(store.is_empty());
            store
                .create_sandbox(&sandbox(&a), "h-a", &boot(&a))
                .unwrap();
            store
                .create_sandbox(&sandbox(&b), "h-b", &boot(&b))
                .unwrap();
            assert_eq!(store.sandbox_exists_cached(&a), Some(true));
            assert!(store.delete_sandbox(&a).unwrap());
            assert_eq!(store.sandbox_exists_cached(&a), Some(false));
            assert!(!store.delete_sandbox(&a).unwrap());
            assert_eq!(store.sandbox_exists_cached(&b), Some(true));
            assert_eq!(
                store.sandbox_exists_cached(&SandboxId::generate()),
                Some(false)
            );
        }
        // A restart loads what the store holds.
        let store = LiveSandboxStore::load(Arc::new(RedbStore::open(dir.path()).unwrap())).unwrap();
        assert_eq!(store.len(), 1);
        assert!(store.contains(&b));
        assert!(!store.contains(&a));
    }
}
