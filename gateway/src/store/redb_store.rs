//! The embedded store: one crash-safe redb file in the data dir (0600).

use std::path::Path;

use palisade_api::{Sandbox, StoredPolicy};
use redb::{Database, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BootstrapLookup, BootstrapRecord, KeyMeta, Precondition, SecretAllowance, SecretRecord, Store,
    StoreError, etag,
};
use crate::principal::SandboxId;

const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const BOOTSTRAP: TableDefinition<&str, &[u8]> = TableDefinition::new("bootstrap_tokens");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const POLICY_REVISION: &str = "policy_revision";
const SECRET_REVISION: &str = "secret_revision";

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "palisade.redb";

#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Like [`decode`], but the error never quotes the record (it holds values).
fn decode_secret(name: &str, bytes: &[u8]) -> Result<SecretRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "secret `{name}` (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

impl RedbStore {
    /// Open (or create) the database in `data_dir`, creating every table.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| {
            StoreError::Backend(format!(
                "cannot open {}: {e}; is another gateway using this --data-dir?",
                path.display()
            ))
        })?;
        crate::fsutil::restrict_file(&path)
            .map_err(|e| StoreError::Backend(format!("chmod 0600 {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(SANDBOXES).map_err(backend)?;
            txn.open_table(POLICIES).map_err(backend)?;
            txn.open_table(BOOTSTRAP).map_err(backend)?;
            txn.open_table(KEYS).map_err(backend)?;
            txn.open_table(SECRETS).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(Self { db })
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(table).map_err(backend)?;
        match t.get(key).map_err(backend)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(table).map_err(backend)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(backend)? {
            let (_, v) = item.map_err(backend)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn create_sandbox(
        &self,
        sandbox: &Sandbox,
        bootstrap_hash: &str,
        bootstrap: &BootstrapRecord,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut s = txn.open_table(SANDBOXES).map_err(backend)?;
            s.insert(sandbox.id.as_str(), encode(sandbox)?.as_slice())
                .map_err(backend)?;
            let mut b = txn.open_table(BOOTSTRAP).map_err(backend)?;
            b.insert(bootstrap_hash, encode(bootstrap)?.as_slice())
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    fn get_sandbox(&self, id: &SandboxId) -> Result<Option<Sandbox>, StoreError> {
        self.get(SANDBOXES, id.as_str())
    }

    fn list_sandboxes(&self) -> Result<Vec<Sandbox>, StoreError> {
        self.all(SANDBOXES)
    }

    fn delete_sandbox(&self, id: &SandboxId) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let existed;
        {
            let mut s = txn.open_table(SANDBOXES).map_err(backend)?;
            existed = s.remove(id.as_str()).map_err(backend)?.is_some();
            let mut b = txn.open_table(BOOTSTRAP).map_err(backend)?;
            let mut doomed = Vec::new();
            for item in b.iter().map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                let rec: BootstrapRecord = decode(v.value())?;
                if &rec.sandbox_id == id {
                    doomed.push(k.value().to_owned());
                }
            }
            for k in doomed {
                b.remove(k.as_str()).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        Ok(existed)
    }

    fn put_policy_if(
        &self,
        name: &str,
        namespace: Option<&str>,
        document: &str,
        now: u64,
        precondition: &Precondition,
    ) -> Result<Result<StoredPolicy, Option<String>>, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let stored;
        {
            let mut p = txn.open_table(POLICIES).map_err(backend)?;
            let current = match p.get(name).map_err(backend)? {
                Some(v) => Some(decode::<StoredPolicy>(v.value())?.etag),
                None => None,
            };
            if !precondition.holds(current.as_deref()) {
                // Dropping the transaction aborts it.
                return Ok(Err(current));
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            let revision = meta
                .get(POLICY_REVISION)
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert(POLICY_REVISION, revision).map_err(backend)?;
            stored = StoredPolicy {
                name: name.to_owned(),
                namespace: namespace.map(str::to_owned),
                revision,
                etag: etag(revision, document),
                document: document.to_owned(),
                updated_at: now,
            };
            p.insert(name, encode(&stored)?.as_slice())
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(Ok(stored))
    }

    fn get_policy(&self, name: &str) -> Result<Option<StoredPolicy>, StoreError> {
        self.get(POLICIES, name)
    }

    fn lookup_bootstrap(&self, hash: &str, now: u64) -> Result<BootstrapLookup, StoreError> {
        Ok(match self.get::<BootstrapRecord>(BOOTSTRAP, hash)? {
            Some(rec) if rec.expires_at > now => BootstrapLookup::Valid(rec),
            Some(_) => BootstrapLookup::Expired,
            None => BootstrapLookup::Unknown,
        })
    }

    fn consume_bootstrap(&self, hash: &str, now: u64) -> Result<Option<SandboxId>, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let found = {
            let mut b = txn.open_table(BOOTSTRAP).map_err(backend)?;
            let removed = b.remove(hash).map_err(backend)?;
            match removed {
                Some(v) => Some(decode::<BootstrapRecord>(v.value())?),
                None => None,
            }
        };
        txn.commit().map_err(backend)?;
        Ok(found
            .filter(|rec| rec.expires_at > now)
            .map(|rec| rec.sandbox_id))
    }

    fn prune_bootstrap(&self, now: u64) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let mut doomed = Vec::new();
        {
            let mut b = txn.open_table(BOOTSTRAP).map_err(backend)?;
            for item in b.iter().map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                if decode::<BootstrapRecord>(v.value())?.expires_at <= now {
                    doomed.push(k.value().to_owned());
                }
            }
            for k in &doomed {
                b.remove(k.as_str()).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        Ok(doomed.len())
    }

    fn put_secret(
        &self,
        name: &str,
        data: &std::collections::BTreeMap<String, String>,
        allowance: &SecretAllowance,
        now: u64,
    ) -> Result<SecretRecord, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let record;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let revision = meta
                .get(SECRET_REVISION)
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert(SECRET_REVISION, revision).map_err(backend)?;
            record = SecretRecord {
                name: name.to_owned(),
                data: data.clone(),
                allowance: allowance.clone(),
                revision,
                updated_at: now,
            };
            let bytes = serde_json::to_vec(&record)
                .map_err(|_| StoreError::Corrupt(format!("secret `{name}` cannot be encoded")))?;
            let mut t = txn.open_table(SECRETS).map_err(backend)?;
            t.insert(name, bytes.as_slice()).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(record)
    }

    fn get_secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(SECRETS).map_err(backend)?;
        match t.get(name).map_err(backend)? {
            Some(v) => Ok(Some(decode_secret(name, v.value())?)),
            None => Ok(None),
        }
    }

    fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(SECRETS).map_err(backend)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            out.push(decode_secret(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let existed = {
            let mut t = txn.open_table(SECRETS).map_err(backend)?;
            let existed = t.remove(name).map_err(backend)?.is_some();
            if existed {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let revision = meta
                    .get(SECRET_REVISION)
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or(0)
                    + 1;
                meta.insert(SECRET_REVISION, revision).map_err(backend)?;
            }
            existed
        };
        txn.commit().map_err(backend)?;
        Ok(existed)
    }

    fn list_keys(&self) -> Result<Vec<KeyMeta>, StoreError> {
        self.all(KEYS)
    }

    fn replace_keys(&self, keys: &[KeyMeta]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut t = txn.open_table(KEYS).map_err(backend)?;
            let mut old = Vec::new();
            for item in t.iter().map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                old.push(k.value().to_owned());
            }
            for k in old {
                t.remove(k.as_str()).map_err(backend)?;
            }
            for key in keys {
                t.insert(key.kid.as_str(), encode(key)?.as_slice())
                    .map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn sandboxes_policies_bootstrap_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = SandboxId::generate();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            let rec = BootstrapRecord {
                sandbox_id: id.clone(),
                expires_at: 100,
            };
            s.create_sandbox(&sandbox(&id), "h1", &rec).unwrap();
            let p1 = s.put_policy("a", "doc1", 5).unwrap();
            let p2 = s.put_policy("b", "doc2", 6).unwrap();
            let p3 = s.put_policy("a", "doc3", 7).unwrap();
            assert!(p1.revision < p2.revision && p2.revision < p3.revision);
            assert_ne!(p1.etag, p3.etag);
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.get_sandbox(&id).unwrap().unwrap().id, id);
        assert_eq!(s.get_policy("a").unwrap().unwrap().document, "doc3");
        assert_eq!(s.put_policy("c", "x", 8).unwrap().revision, 4);
        let current = s.get_policy("c").unwrap().unwrap().etag;
        let stale = Precondition::IfMatch("\"r1-0\"".into());
        assert_eq!(
            s.put_policy_if("c", None, "y", 9, &stale).unwrap(),
            Err(Some(current.clone()))
        );
        assert_eq!(
            s.get_policy("c").unwrap().unwrap().document,
            "x",
            "not written"
        );
        let fresh = Precondition::IfMatch(current);
        assert_eq!(
            s.put_policy_if("c", None, "y", 9, &fresh)
                .unwrap()
                .unwrap()
                .revision,
            5
        );
        let create_only = Precondition::IfNoneMatchAny;
        assert!(
            s.put_policy_if("c", None, "z", 9, &create_only)
                .unwrap()
                .is_err()
        );
        assert!(
            s.put_policy_if("d", Some("ns-a"), "z", 9, &create_only)
                .unwrap()
                .is_ok()
        );
        assert_eq!(
            s.get_policy("d").unwrap().unwrap().namespace.as_deref(),
            Some("ns-a")
        );
        assert_eq!(
            s.get_policy("c").unwrap().unwrap().namespace,
            None,
            "cluster-wide"
        );
        assert!(matches!(
            s.lookup_bootstrap("h1", 50).unwrap(),
            BootstrapLookup::Valid(_)
        ));
        assert_eq!(
            s.lookup_bootstrap("h1", 100).unwrap(),
            BootstrapLookup::Expired
        );
        assert_eq!(s.consume_bootstrap("h1", 50).unwrap(), Some(id.clone()));
        assert_eq!(s.consume_bootstrap("h1", 50).unwrap(), None, "one use only");
        assert_eq!(
            s.lookup_bootstrap("h1", 50).unwrap(),
            BootstrapLookup::Unknown
        );
    }

    #[test]
    fn delete_removes_bootstrap_tokens_and_expired_cannot_be_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let id = SandboxId::generate();
        let rec = BootstrapRecord {
            sandbox_id: id.clone(),
            expires_at: 10,
        };
        s.create_sandbox(&sandbox(&id), "h", &rec).unwrap();
        assert_eq!(s.consume_bootstrap("h", 10).unwrap(), None, "expired");
        s.create_sandbox(&sandbox(&id), "old", &rec).unwrap();
        let fresh = BootstrapRecord {
            sandbox_id: id.clone(),
            expires_at: 100,
        };
        s.create_sandbox(&sandbox(&id), "new", &fresh).unwrap();
        assert_eq!(s.prune_bootstrap(50).unwrap(), 1);
        assert_eq!(
            s.lookup_bootstrap("old", 5).unwrap(),
            BootstrapLookup::Unknown
        );
        assert!(matches!(
            s.lookup_bootstrap("new", 50).unwrap(),
            BootstrapLookup::Valid(_)
        ));
        s.create_sandbox(&sandbox(&id), "h2", &rec).unwrap();
        assert!(s.delete_sandbox(&id).unwrap());
        assert!(!s.delete_sandbox(&id).unwrap());
        assert_eq!(
            s.lookup_bootstrap("h2", 1).unwrap(),
            BootstrapLookup::Unknown
        );
        assert!(s.list_sandboxes().unwrap().is_empty());
    }

    #[test]
    fn secrets_revise_list_delete_and_debug_redacts() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let data = std::collections::BTreeMap::from([("token".to_owned(), "s3cr3t".to_owned())]);
        let allowance = SecretAllowance {
            namespaces: vec!["ns-a".into()],
            policies: vec![],
            hosts: vec!["api.github.com:443".into()],
        };
        let a = s
            .put_secret("gh", &data, &SecretAllowance::default(), 1)
            .unwrap();
        let b = s.put_secret("gh", &data, &allowance, 2).unwrap();
        assert!(b.revision > a.revision);
        assert_eq!(s.get_secret("gh").unwrap().unwrap().data["token"], "s3cr3t");
        assert_eq!(s.get_secret("gh").unwrap().unwrap().allowance, allowance);
        assert_eq!(
            b.info().allowed_hosts,
            vec!["api.github.com:443".to_owned()]
        );
        assert!(!format!("{b:?}").contains("s3cr3t"));
        let info = b.info();
        assert_eq!(info.keys[0].key, "token");
        assert!(info.keys[0].fingerprint.starts_with("sha256:"));
        assert_eq!(s.list_secrets().unwrap().len(), 1);
        assert!(s.delete_secret("gh").unwrap());
        assert!(!s.delete_secret("gh").unwrap());
        assert!(s.get_secret("gh").unwrap().is_none());
    }

    #[test]
    fn secrets_stored_before_allowances_existed_allow_nothing() {
        let old = br#"{"name":"gh","data":{"token":"v"},"revision":3,"updated_at":1}"#;
        let record = decode_secret("gh", old).unwrap();
        assert_eq!(record.allowance, SecretAllowance::default());
    }

    #[test]
    fn database_file_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let _s = RedbStore::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
