//! The store of a replicated gateway: the Kubernetes API server (etcd behind
//! it) holds every record, so any replica can die without losing one.
//!
//! | record | object | where |
//! | --- | --- | --- |
//! | sandbox | `Sandbox` (`palisade.dev/v1alpha1`), named by its id | the sandbox's namespace, else the gateway's |
//! | policy | `Policy`, the document's `spec` as is | its namespace; cluster-wide ones in the gateway's, labelled [`CLUSTER_WIDE_LABEL`] |
//! | bootstrap token | Secret `palisade-bootstrap-<sha256>` (type [`BOOTSTRAP_TYPE`]) | the gateway's |
//! | secret | Secret `palisade-secret-<name>` (type [`SECRET_TYPE`]) | the gateway's |
//! | revision counters | ConfigMap [`COUNTERS`] | the gateway's |
//! | signing keys (private halves) and their metadata | Secret [`SIGNING_KEYS`] | the gateway's |
//!
//! * **Reads** come from watch-fed caches ([`Cache`]), primed before
//!   [`KubeStore::connect`] returns; after its own write a replica waits
//!   until its cache has seen that write, so it reads what it wrote.
//!   A sandbox id not in the cache is looked up on the API server (it may
//!   have been created on another replica a moment ago).
//! * **Writes** carry `resourceVersion` preconditions: a 409 re-reads and
//!   retries, so no update is lost; a policy's `If-Match` is checked against
//!   the fresh object, in the same precondition.
//! * **Revisions** come from one compare-and-swap counter, a ConfigMap
//!   replaced with its `resourceVersion`: a counter object rather than
//!   `resourceVersion`s themselves because revisions must be strictly
//!   increasing integers that mean the same on every replica and survive a
//!   backup/restore of the objects, and etcd's revision is neither
//!   guaranteed numeric by the API nor preserved. A revision is taken
//!   *after* the object it stamps was read, and the write is conditional on
//!   that read, so one policy's revisions only ever go up.
//! * **Bootstrap tokens** are consumed by a delete conditioned on the uid
//!   and `resourceVersion` just read: of concurrent consumers on any
//!   replicas exactly one delete succeeds.
//! * **Policies written with `kubectl apply`** are accepted by
//!   [`KubeStore::reconcile_policies`]: validated like `PUT /v1/policies`, then
//!   stamped with a revision ([`ACCEPTED_ANNOTATION`]) and a status. A policy
//!   is served only while its stamp is for its current `metadata.generation`:
//!   an edit that does not validate takes it out of service (fail closed)
//!   and its status says why.
//!
//! Must never: put a secret value or a bootstrap token anywhere but a Secret
//! (bootstrap Secrets hold only the token's SHA-256), or overwrite an object
//! without its `resourceVersion`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt as _};
use palisade_api::{Sandbox, SandboxSpec, StoredPolicy};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::{
    BootstrapLookup, BootstrapRecord, KeyMaterial, KeyMeta, Precondition, SecretAllowance,
    SecretRecord, Store, StoreError, etag,
};
use crate::crd;
use crate::principal::SandboxId;

/// The ConfigMap holding the revision counters and the key metadata.
pub const COUNTERS: &str = "palisade-store";
/// Label of a cluster-wide policy (stored in the gateway's namespace).
pub const CLUSTER_WIDE_LABEL: &str = "palisade.dev/cluster-wide";
/// `"<revision>/<generation>/<updated_at>"`: the accepted spec and its revision.
pub const ACCEPTED_ANNOTATION: &str = "palisade.dev/accepted";
/// Type of a bootstrap-token Secret.
pub const BOOTSTRAP_TYPE: &str = "palisade.dev/bootstrap";
/// Type of a Secret that holds one gateway secret.
pub const SECRET_TYPE: &str = "palisade.dev/secret";
/// Label naming the sandbox a bootstrap Secret belongs to.
pub const SANDBOX_LABEL: &str = "palisade.dev/sandbox";
const SECRET_NAME_LABEL: &str = "palisade.dev/secret-name";
const ALLOWANCE_ANNOTATION: &str = "palisade.dev/allowance";
const REVISION_ANNOTATION: &str = "palisade.dev/revision";
const UPDATED_ANNOTATION: &str = "palisade.dev/updated-at";
const BOOTSTRAP_PREFIX: &str = "palisade-bootstrap-";
const SECRET_PREFIX: &str = "palisade-secret-";
const POLICY_COUNTER: &str = "policyRevision";
const SECRET_COUNTER: &str = "secretRevision";
const KEYS_KEY: &str = "keys.json";
/// The Secret holding every signing key (private halves) and their metadata.
pub const SIGNING_KEYS: &str = "palisade-signing-keys";
const SIGNING_KEYS_TYPE: &str = "palisade.dev/signing-keys";
/// How long a writer waits for its own write to reach its cache.
const READ_YOUR_WRITE: Duration = Duration::from_secs(5);
/// The oldest a cache may be when it is read: a watch that has failed
/// longer than this makes reads fail (503) rather than serve stale records.
pub const STALE_BOUND: Duration = Duration::from_secs(5);
/// How often a write is retried after a resourceVersion conflict.
const CONFLICT_RETRIES: usize = 64;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("kubernetes API: {e}"))
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// A watch-fed map of one kind of object, keyed by namespace and name.
struct Cache<K> {
    objects: RwLock<HashMap<(String, String), Arc<K>>>,
    changed: Notify,
    /// Bumped on every change, for those who react to them.
    changes: tokio::sync::watch::Sender<u64>,
    /// Since when the watch has been failing (`None`: it is healthy).
    broken_since: parking_lot::Mutex<Option<std::time::Instant>>,
    /// Whether a watch error may be logged as it is. Not for Secrets: a
    /// decoding error can quote the value it choked on.
    quote_errors: bool,
}

impl<K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static> Cache<K> {
    fn new(quote_errors: bool) -> Arc<Self> {
        Arc::new(Cache {
            quote_errors,
            objects: RwLock::new(HashMap::new()),
            changed: Notify::new(),
            changes: tokio::sync::watch::channel(0).0,
            broken_since: parking_lot::Mutex::new(None),
        })
    }

    /// `Err` once the watch has failed for longer than [`STALE_BOUND`]:
    /// what the cache holds may be older than that, so it is not served.
    fn fresh(&self, what: &str) -> Result<(), StoreError> {
        match *self.broken_since.lock() {
            Some(since) if since.elapsed() > STALE_BOUND => Err(StoreError::Backend(format!(
                "the watch of {what} has failed for {}s (the API server is unreachable?); not \
                 serving what may be stale",
                since.elapsed().as_secs()
            ))),
            _ => Ok(()),
        }
    }

    fn touched(&self) {
        self.changed.notify_waiters();
        self.changes.send_modify(|n| *n += 1);
    }

    fn key(obj: &K) -> (String, String) {
        (obj.namespace().unwrap_or_default(), obj.name_any())
    }

    /// Run the watch for ever; `ready` fires once the first list is in.
    ///
    /// A failed watch is started again from a fresh list, and only a
    /// complete list makes the cache fresh again: a re-watch that succeeds
    /// shows nothing until an object changes, so it could not tell a cache
    /// that caught up from one that did not.
    async fn run(self: Arc<Self>, api: Api<K>, config: watcher::Config, ready: Arc<Notify>) {
        loop {
            let mut stream = watcher(api.clone(), config.clone()).boxed();
            let mut fresh: Option<HashMap<(String, String), Arc<K>>> = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => fresh = Some(HashMap::new()),
                    Ok(watcher::Event::InitApply(obj)) => {
                        if let Some(map) = fresh.as_mut() {
                            map.insert(Self::key(&obj), Arc::new(obj));
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(map) = fresh.take() {
                            *self.objects.write() = map;
                        }
                        *self.broken_since.lock() = None;
                        ready.notify_one();
                        self.touched();
                    }
                    Ok(watcher::Event::Apply(obj)) => {
                        self.objects.write().insert(Self::key(&obj), Arc::new(obj));
                        self.touched();
                    }
                    Ok(watcher::Event::Delete(obj)) => {
                        self.objects.write().remove(&Self::key(&obj));
                        self.touched();
                    }
                    Err(e) => {
                        self.broken_since
                            .lock()
                            .get_or_insert_with(std::time::Instant::now);
                        let error = if self.quote_errors {
                            e.to_string()
                        } else {
                            "<withheld: it may quote a secret value>".to_owned()
                        };
                        tracing::warn!(kind = std::any::type_name::<K>(), %error,
                            "watch failed; listing again");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.objects
            .read()
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    fn find(&self, name: &str) -> Vec<Arc<K>> {
        self.objects
            .read()
            .iter()
            .filter(|((_, n), _)| n == name)
            .map(|(_, o)| o.clone())
            .collect()
    }

    fn all(&self) -> Vec<Arc<K>> {
        self.objects.read().values().cloned().collect()
    }

    /// Wait until the cache holds `namespace/name` at `resource_version` or
    /// later (`None`: until it is gone).
    async fn wait_for(&self, namespace: &str, name: &str, resource_version: Option<&str>) {
        let seen = |this: &Self| {
            let current = this.get(namespace, name);
            match (resource_version, current) {
                (None, None) => true,
                (None, Some(_)) | (Some(_), None) => false,
                (Some(want), Some(obj)) => {
                    let have = obj.resource_version().unwrap_or_default();
                    have == want
                        || matches!((have.parse::<u64>(), want.parse::<u64>()), (Ok(h), Ok(w)) if h > w)
                }
            }
        };
        let _ = tokio::time::timeout(READ_YOUR_WRITE, async {
            loop {
                let notified = self.changed.notified();
                if seen(self) {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

/// [`Store`] on the Kubernetes API.
pub struct KubeStore {
    client: Client,
    /// The gateway's own namespace.
    namespace: String,
    runtime: tokio::runtime::Handle,
    sandboxes: Arc<Cache<crd::Sandbox>>,
    policies: Arc<Cache<crd::Policy>>,
    secrets: Arc<Cache<Secret>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubeStore {
    /// Start the watches and wait (at most `timeout`) until every cache has
    /// its first list: a replica serves nothing before it has seen the store.
    pub async fn connect(
        client: Client,
        namespace: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let sandboxes = Cache::new(true);
        let policies = Cache::new(true);
        let secrets = Cache::new(false);
        let mut tasks = Vec::new();
        let mut readies = Vec::new();
        let ready = Arc::new(Notify::new());
        tasks.push(tokio::spawn(sandboxes.clone().run(
            Api::all(client.clone()),
            watcher::Config::default().any_semantic(),
            ready.clone(),
        )));
        readies.push(ready);
        let ready = Arc::new(Notify::new());
        tasks.push(tokio::spawn(policies.clone().run(
            Api::all(client.clone()),
            watcher::Config::default().any_semantic(),
            ready.clone(),
        )));
        readies.push(ready);
        let ready = Arc::new(Notify::new());
        tasks.push(tokio::spawn(secrets.clone().run(
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(SECRET_NAME_LABEL),
            ready.clone(),
        )));
        readies.push(ready);
        let store = KubeStore {
            client,
            namespace: namespace.to_owned(),
            runtime: tokio::runtime::Handle::current(),
            sandboxes,
            policies,
            secrets,
            tasks,
        };
        let primed = tokio::time::timeout(timeout, async {
            for ready in &readies {
                ready.notified().await;
            }
        })
        .await;
        if primed.is_err() {
            return Err(StoreError::Backend(format!(
                "the Kubernetes API did not list sandboxes, policies and secrets within {}s; \
                 check the API server, the CRDs (helm/crds/) and the gateway's RBAC",
                timeout.as_secs()
            )));
        }
        store.ensure_counters().await?;
        Ok(store)
    }

    /// The client it talks to the API server with.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The gateway's own namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Ticks whenever any replica changed a policy.
    pub fn policy_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.policies.changes.subscribe()
    }

    /// Ticks whenever any replica created or deleted a sandbox.
    pub fn sandbox_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sandboxes.changes.subscribe()
    }

    /// Ids of every sandbox in the cache that is not being deleted.
    pub fn cached_sandbox_ids(&self) -> std::collections::HashSet<SandboxId> {
        self.sandboxes
            .all()
            .iter()
            .filter_map(|o| sandbox_record(o, &self.namespace))
            .map(|s| s.id)
            .collect()
    }

    /// Ticks whenever any replica changed a secret.
    pub fn secret_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.secrets.changes.subscribe()
    }

    /// The highest revision of any served policy.
    pub fn policy_revision(&self) -> u64 {
        self.policies
            .all()
            .iter()
            .filter_map(|p| served_policy(p, &self.namespace))
            .map(|p| p.revision)
            .max()
            .unwrap_or(0)
    }

    /// The highest revision of any secret.
    pub fn secret_revision(&self) -> u64 {
        self.list_secrets()
            .map(|all| all.iter().map(|s| s.revision).max().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Run `fut` to completion from the synchronous [`Store`] methods, which
    /// are called from `spawn_blocking` threads and, here and there, from
    /// async code on the multi-threaded runtime.
    fn block<F: Future>(&self, fut: F) -> F::Output {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(fut))
            }
            _ => self.runtime.block_on(fut),
        }
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn own_secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn ensure_counters(&self) -> Result<(), StoreError> {
        let api = self.config_maps();
        if api.get_opt(COUNTERS).await.map_err(backend)?.is_some() {
            return Ok(());
        }
        let counters = ConfigMap {
            metadata: ObjectMeta {
                name: Some(COUNTERS.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "palisade".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (POLICY_COUNTER.to_owned(), "0".to_owned()),
                (SECRET_COUNTER.to_owned(), "0".to_owned()),
            ])),
            ..ConfigMap::default()
        };
        match api.create(&PostParams::default(), &counters).await {
            Ok(_) => Ok(()),
            // Another replica made it first.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    /// Change the counters ConfigMap with a compare-and-swap: `change` sees
    /// the current data and returns what to write and a result.
    async fn update_counters<T>(
        &self,
        mut change: impl FnMut(&mut BTreeMap<String, String>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let api = self.config_maps();
        for _ in 0..CONFLICT_RETRIES {
            let mut current = api.get(COUNTERS).await.map_err(backend)?;
            let data = current.data.get_or_insert_with(BTreeMap::new);
            let out = change(data)?;
            match api
                .replace(COUNTERS, &PostParams::default(), &current)
                .await
            {
                Ok(_) => return Ok(out),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(backend(e)),
            }
        }
        Err(StoreError::Backend(format!(
            "ConfigMap {COUNTERS}: still conflicting after {CONFLICT_RETRIES} attempts"
        )))
    }

    /// The next value of counter `key`, unique across replicas.
    async fn next_revision(&self, key: &str) -> Result<u64, StoreError> {
        self.update_counters(|data| {
            let current = data
                .get(key)
                .map(|v| v.parse::<u64>())
                .transpose()
                .map_err(|_| {
                    StoreError::Corrupt(format!("ConfigMap {COUNTERS}: `{key}` is not a number"))
                })?
                .unwrap_or(0);
            let next = current + 1;
            data.insert(key.to_owned(), next.to_string());
            Ok(next)
        })
        .await
    }

    // ----- sandboxes -----

    fn sandbox_namespace(&self, sandbox: &Sandbox) -> String {
        sandbox
            .spec
            .namespace
            .clone()
            .unwrap_or_else(|| self.namespace.clone())
    }

    /// The sandbox object of `id`, from the cache or (not cached yet: made
    /// on another replica a moment ago) from the API server.
    async fn find_sandbox(&self, id: &SandboxId) -> Result<Option<crd::Sandbox>, StoreError> {
        let fresh = self.sandboxes.fresh("sandboxes").is_ok();
        if let Some(obj) = self
            .sandboxes
            .find(id.as_str())
            .into_iter()
            .next()
            .filter(|_| fresh)
        {
            return Ok(Some((*obj).clone()));
        }
        let api: Api<crd::Sandbox> = Api::all(self.client.clone());
        let found = api
            .list(&ListParams::default().fields(&format!("metadata.name={}", id.as_str())))
            .await
            .map_err(backend)?;
        Ok(found.items.into_iter().next())
    }

    async fn create_sandbox_async(
        &self,
        sandbox: &Sandbox,
        bootstrap_hash: &str,
        bootstrap: &BootstrapRecord,
    ) -> Result<(), StoreError> {
        let namespace = self.sandbox_namespace(sandbox);
        let api: Api<crd::Sandbox> = Api::namespaced(self.client.clone(), &namespace);
        let object = sandbox_object(sandbox, &namespace);
        let created = api
            .create(&PostParams::default(), &object)
            .await
            .map_err(backend)?;
        let secret = bootstrap_secret(bootstrap_hash, bootstrap);
        if let Err(e) = self
            .own_secrets()
            .create(&PostParams::default(), &secret)
            .await
        {
            // One record or none: take the sandbox back.
            let _ = api
                .delete(sandbox.id.as_str(), &DeleteParams::default())
                .await;
            return Err(backend(e));
        }
        self.sandboxes
            .wait_for(
                &namespace,
                sandbox.id.as_str(),
                created.resource_version().as_deref(),
            )
            .await;
        Ok(())
    }

    async fn delete_sandbox_async(&self, id: &SandboxId) -> Result<bool, StoreError> {
        let secrets = self.own_secrets();
        let tokens = secrets
            .list(&ListParams::default().labels(&format!("{SANDBOX_LABEL}={}", id.as_str())))
            .await
            .map_err(|e| backend(status_reason(&e)))?;
        for token in tokens.items {
            match secrets
                .delete(&token.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        let Some(object) = self.find_sandbox(id).await? else {
            return Ok(false);
        };
        let namespace = object.namespace().unwrap_or_default();
        let api: Api<crd::Sandbox> = Api::namespaced(self.client.clone(), &namespace);
        match api.delete(id.as_str(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(false),
            Err(e) => return Err(backend(e)),
        }
        // A finalizer (the kubernetes driver's) may keep it a while; it is
        // deleted as far as the store is concerned.
        let api: Api<crd::Sandbox> = Api::namespaced(self.client.clone(), &namespace);
        let gone = api.get_opt(id.as_str()).await.map_err(backend)?.is_none();
        if gone {
            self.sandboxes.wait_for(&namespace, id.as_str(), None).await;
        }
        Ok(true)
    }

    // ----- bootstrap tokens -----

    async fn bootstrap_secret_of(&self, hash: &str) -> Result<Option<Secret>, StoreError> {
        if !hash.bytes().all(|b| b.is_ascii_hexdigit()) || hash.len() != 64 {
            return Ok(None);
        }
        self.own_secrets()
            .get_opt(&format!("{BOOTSTRAP_PREFIX}{}", hash.to_ascii_lowercase()))
            .await
            .map_err(|e| backend(status_reason(&e)))
    }

    async fn lookup_bootstrap_async(
        &self,
        hash: &str,
        now: u64,
    ) -> Result<BootstrapLookup, StoreError> {
        let Some(secret) = self.bootstrap_secret_of(hash).await? else {
            return Ok(BootstrapLookup::Unknown);
        };
        let record = bootstrap_record(&secret)?;
        Ok(if record.expires_at <= now {
            BootstrapLookup::Expired
        } else {
            BootstrapLookup::Valid(record)
        })
    }

    async fn consume_bootstrap_async(
        &self,
        hash: &str,
        now: u64,
    ) -> Result<Option<SandboxId>, StoreError> {
        let Some(secret) = self.bootstrap_secret_of(hash).await? else {
            return Ok(None);
        };
        let record = bootstrap_record(&secret)?;
        if record.expires_at <= now {
            return Ok(None);
        }
        // `false`: another replica (or request) consumed it first.
        let consumed = delete_as_read(&self.own_secrets(), &secret).await?;
        Ok(consumed.then_some(record.sandbox_id))
    }

    async fn prune_bootstrap_async(&self, now: u64) -> Result<usize, StoreError> {
        let secrets = self.own_secrets();
        let items = secrets
            .list(&ListParams::default().labels(SANDBOX_LABEL))
            .await
            .map_err(|e| backend(status_reason(&e)))?
            .items;
        let mut pruned = 0;
        for secret in items {
            if secret.type_.as_deref() != Some(BOOTSTRAP_TYPE) {
                continue;
            }
            let record = bootstrap_record(&secret)?;
            if record.expires_at > now {
                continue;
            }
            pruned += usize::from(delete_as_read(&secrets, &secret).await?);
        }
        Ok(pruned)
    }

    /// The Lease holder's sweep: expired bootstrap tokens, and bootstrap
    /// tokens of sandboxes that no longer exist (deleted with `kubectl`, or
    /// a replica killed between the two writes of a create). Returns how
    /// many Secrets went.
    pub async fn collect_garbage(&self, now: u64) -> Result<usize, StoreError> {
        let mut removed = self.prune_bootstrap_async(now).await?;
        let secrets = self.own_secrets();
        let tokens = secrets
            .list(&ListParams::default().labels(SANDBOX_LABEL))
            .await
            .map_err(|e| backend(status_reason(&e)))?;
        for token in tokens.items {
            if token.type_.as_deref() != Some(BOOTSTRAP_TYPE) {
                continue;
            }
            let Ok(record) = bootstrap_record(&token) else {
                continue;
            };
            let exists = self
                .find_sandbox(&record.sandbox_id)
                .await?
                .is_some_and(|o| sandbox_record(&o, &self.namespace).is_some());
            if exists {
                continue;
            }
            if delete_as_read(&secrets, &token).await? {
                tracing::info!(sandbox = %record.sandbox_id,
                    "bootstrap token of a sandbox that no longer exists removed");
                removed += 1;
            }
        }
        Ok(removed)
    }

    // ----- policies -----

    /// Where a policy of `namespace` (`None`: cluster-wide) is kept.
    fn policy_namespace(&self, namespace: Option<&str>) -> String {
        namespace.unwrap_or(&self.namespace).to_owned()
    }

    /// The object named `name` that the gateway serves as policy `name`:
    /// policy names are one key space, so a second object of that name in
    /// another namespace is an error.
    fn cached_policy(&self, name: &str) -> Result<Option<Arc<crd::Policy>>, StoreError> {
        self.policies.fresh("policies")?;
        let mut found = self.policies.find(name);
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(StoreError::Corrupt(format!(
                "policy `{name}` exists in {} namespaces ({}); policy names are one key space, \
                 delete all but one",
                found.len(),
                found
                    .iter()
                    .map(|p| p.namespace().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    async fn put_policy_async(
        &self,
        name: &str,
        namespace: Option<&str>,
        document: &str,
        now: u64,
        precondition: &Precondition,
    ) -> Result<Result<StoredPolicy, Option<String>>, StoreError> {
        let parsed = palisade_policy::parse_policy(document.as_bytes()).map_err(|e| {
            StoreError::Backend(format!(
                "policy `{name}` does not parse: {}",
                join_errors(&e)
            ))
        })?;
        let target_ns = self.policy_namespace(namespace);
        if let Some(other) = self.cached_policy(name)?
            && other.namespace().as_deref() != Some(target_ns.as_str())
        {
            return Ok(Err(served_policy(&other, &self.namespace).map(|p| p.etag)));
        }
        let api: Api<crd::Policy> = Api::namespaced(self.client.clone(), &target_ns);
        for _ in 0..CONFLICT_RETRIES {
            let current = api.get_opt(name).await.map_err(backend)?;
            let current_etag = current
                .as_ref()
                .and_then(|c| served_policy(c, &self.namespace))
                .map(|p| p.etag);
            if !precondition.holds(current_etag.as_deref()) {
                // The caller reads the policy again next: let it see this one.
                if let Some(c) = &current {
                    self.policies
                        .wait_for(&target_ns, name, c.resource_version().as_deref())
                        .await;
                }
                return Ok(Err(current_etag));
            }
            let revision = self.next_revision(POLICY_COUNTER).await?;
            let mut object = current
                .clone()
                .unwrap_or_else(|| crd::Policy::new(name, crd::PolicySpec(parsed.spec.clone())));
            let spec_changed = current.as_ref().is_none_or(|c| c.spec.0 != parsed.spec);
            let generation = match &current {
                None => 1,
                Some(c) => c.metadata.generation.unwrap_or(1) + i64::from(spec_changed),
            };
            object.spec = crd::PolicySpec(parsed.spec.clone());
            object.metadata.namespace = Some(target_ns.clone());
            let labels = object.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.retain(|k, _| k.starts_with("palisade.dev/"));
            labels.extend(parsed.metadata.labels.clone());
            if namespace.is_none() {
                labels.insert(CLUSTER_WIDE_LABEL.to_owned(), "true".to_owned());
            } else {
                labels.remove(CLUSTER_WIDE_LABEL);
            }
            object
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(
                    ACCEPTED_ANNOTATION.to_owned(),
                    format!("{revision}/{generation}/{now}"),
                );
            let written = match &current {
                None => api.create(&PostParams::default(), &object).await,
                Some(_) => api.replace(name, &PostParams::default(), &object).await,
            };
            let written = match written {
                Ok(w) => w,
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(backend(e)),
            };
            if written.metadata.generation.is_some_and(|g| g != generation) {
                tracing::warn!(policy = %name, "the API server counted generations differently");
            }
            self.write_policy_status(&written, Ok(revision)).await;
            self.policies
                .wait_for(&target_ns, name, written.resource_version().as_deref())
                .await;
            let stored = served_policy(&written, &self.namespace).ok_or_else(|| {
                StoreError::Corrupt(format!("policy `{name}` was written without its stamp"))
            })?;
            return Ok(Ok(stored));
        }
        Err(StoreError::Backend(format!(
            "policy `{name}`: still conflicting after {CONFLICT_RETRIES} attempts"
        )))
    }

    /// Best effort: the status is for people (`kubectl get policies`);
    /// what is served is the stamp on the object.
    async fn write_policy_status(&self, object: &crd::Policy, outcome: Result<u64, Vec<String>>) {
        let namespace = object.namespace().unwrap_or_default();
        let api: Api<crd::Policy> = Api::namespaced(self.client.clone(), &namespace);
        let status = match outcome {
            Ok(revision) => crd::PolicyStatus {
                accepted: Some("True".to_owned()),
                errors: Vec::new(),
                revision: Some(revision),
                observed_generation: object.metadata.generation,
            },
            Err(errors) => crd::PolicyStatus {
                accepted: Some("False".to_owned()),
                errors,
                revision: None,
                observed_generation: object.metadata.generation,
            },
        };
        let mut status = serde_json::to_value(&status).unwrap_or_default();
        if status.get("revision").is_none() {
            // A rejected spec is served under no revision: clear the old one.
            status["revision"] = serde_json::Value::Null;
        }
        let patch = serde_json::json!({ "status": status });
        if let Err(e) = api
            .patch_status(
                &object.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            tracing::debug!(policy = %object.name_any(), error = %e, "policy status not written");
        }
    }

    /// Accept (or reject, with the reasons in its status) every `Policy`
    /// whose current spec has no stamp: the ones written with `kubectl`.
    /// `check` validates a policy as `PUT /v1/policies` does; it returns the
    /// problems. Safe to run on every replica at once.
    pub async fn reconcile_policies(
        &self,
        check: &(dyn Fn(&palisade_policy::Policy, Option<&str>) -> Vec<String> + Sync),
    ) -> Result<usize, StoreError> {
        let mut accepted = 0;
        for object in self.policies.all() {
            if served_policy(&object, &self.namespace).is_some() {
                continue;
            }
            let generation = object.metadata.generation.unwrap_or(1);
            let namespace = policy_scope(&object, &self.namespace);
            let document = document_of(&object);
            let problems = match palisade_policy::parse_policy(document.as_bytes()) {
                Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
                Ok(policy) => check(&policy, namespace.as_deref()),
            };
            if !problems.is_empty() {
                // Checked again on every change (a secret's allowance may
                // have changed), written only when the verdict did.
                let unchanged = object.status.as_ref().is_some_and(|s| {
                    s.observed_generation == Some(generation)
                        && s.accepted.as_deref() == Some("False")
                        && s.errors == problems
                });
                if !unchanged {
                    self.write_policy_status(&object, Err(problems)).await;
                }
                continue;
            }
            let revision = self.next_revision(POLICY_COUNTER).await?;
            let mut stamped = (*object).clone();
            stamped
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(
                    ACCEPTED_ANNOTATION.to_owned(),
                    format!("{revision}/{generation}/{}", crate::fsutil::now()),
                );
            let api: Api<crd::Policy> =
                Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
            match api
                .replace(&object.name_any(), &PostParams::default(), &stamped)
                .await
            {
                Ok(written) => {
                    self.write_policy_status(&written, Ok(revision)).await;
                    accepted += 1;
                }
                // Changed meanwhile, or another replica stamped it: the next round sees it.
                Err(e) if is_status(&e, 409) || is_status(&e, 404) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(accepted)
    }

    // ----- secrets -----

    fn secret_record(&self, secret: &Secret) -> Result<SecretRecord, StoreError> {
        let name = secret
            .labels()
            .get(SECRET_NAME_LABEL)
            .cloned()
            .unwrap_or_default();
        let annotations = secret.annotations();
        let allowance = match annotations.get(ALLOWANCE_ANNOTATION) {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| StoreError::Corrupt(format!("secret `{name}` allowance: {e}")))?,
            None => SecretAllowance::default(),
        };
        let number = |key: &str| {
            annotations
                .get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut data = BTreeMap::new();
        for (key, value) in secret.data.iter().flatten() {
            let text = String::from_utf8(value.0.clone()).map_err(|_| {
                StoreError::Corrupt(format!("secret `{name}`: value of `{key}` is not UTF-8"))
            })?;
            data.insert(key.clone(), text);
        }
        Ok(SecretRecord {
            name,
            data,
            allowance,
            revision: number(REVISION_ANNOTATION),
            updated_at: number(UPDATED_ANNOTATION),
        })
    }

    async fn put_secret_async(
        &self,
        name: &str,
        data: &BTreeMap<String, String>,
        allowance: &SecretAllowance,
        now: u64,
    ) -> Result<SecretRecord, StoreError> {
        let api = self.own_secrets();
        let object_name = format!("{SECRET_PREFIX}{name}");
        let allowance_text =
            serde_json::to_string(allowance).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        for _ in 0..CONFLICT_RETRIES {
            let current = api
                .get_opt(&object_name)
                .await
                .map_err(|e| backend(status_reason(&e)))?;
            let revision = self.next_revision(SECRET_COUNTER).await?;
            let mut object = current.clone().unwrap_or_default();
            object.metadata.name = Some(object_name.clone());
            object.type_ = Some(SECRET_TYPE.to_owned());
            object
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(SECRET_NAME_LABEL.to_owned(), name.to_owned());
            let annotations = object
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new);
            annotations.insert(ALLOWANCE_ANNOTATION.to_owned(), allowance_text.clone());
            annotations.insert(REVISION_ANNOTATION.to_owned(), revision.to_string());
            annotations.insert(UPDATED_ANNOTATION.to_owned(), now.to_string());
            object.string_data = None;
            object.data = Some(
                data.iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            );
            let written = match &current {
                None => api.create(&PostParams::default(), &object).await,
                Some(_) => {
                    api.replace(&object_name, &PostParams::default(), &object)
                        .await
                }
            };
            match written {
                Ok(written) => {
                    self.secrets
                        .wait_for(
                            &self.namespace,
                            &object_name,
                            written.resource_version().as_deref(),
                        )
                        .await;
                    return self.secret_record(&written);
                }
                Err(e) if is_status(&e, 409) => continue,
                // Never quote the request: it holds the values.
                Err(e) => {
                    return Err(backend(format!(
                        "writing secret `{name}`: {}",
                        status_reason(&e)
                    )));
                }
            }
        }
        Err(StoreError::Backend(format!(
            "secret `{name}`: still conflicting after {CONFLICT_RETRIES} attempts"
        )))
    }

    async fn delete_secret_async(&self, name: &str) -> Result<bool, StoreError> {
        let object_name = format!("{SECRET_PREFIX}{name}");
        match self
            .own_secrets()
            .delete(&object_name, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                self.secrets
                    .wait_for(&self.namespace, &object_name, None)
                    .await;
                Ok(true)
            }
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }
}

fn join_errors(errors: &palisade_policy::PolicyErrors) -> String {
    errors
        .0
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Delete `secret` only as it was read (uid and resourceVersion): `false`
/// when it is gone or changed meanwhile (someone else got there first).
async fn delete_as_read(api: &Api<Secret>, secret: &Secret) -> Result<bool, StoreError> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.uid(),
            resource_version: secret.resource_version(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&secret.name_any(), &params).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(false),
        Err(e) => Err(backend(e)),
    }
}

/// An API error without anything of the request in it.
fn status_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        // serde's message may quote the value it could not decode.
        kube::Error::SerdeError(_) => "the API server's answer did not decode".to_owned(),
        other => other.to_string(),
    }
}

fn sandbox_object(sandbox: &Sandbox, namespace: &str) -> crd::Sandbox {
    let spec = crd::SandboxSpec {
        display_name: sandbox.spec.name.clone(),
        policy_ref: sandbox.spec.policy.clone(),
        service_account: sandbox.spec.service_account.clone(),
        uid: sandbox.spec.uid,
        gid: sandbox.spec.gid,
        command: sandbox.spec.command.clone(),
        labels: sandbox.spec.labels.clone(),
        owner: sandbox.owner.clone(),
        created_at: sandbox.created_at,
    };
    let mut object = crd::Sandbox::new(sandbox.id.as_str(), spec);
    object.metadata.namespace = Some(namespace.to_owned());
    let mut labels = BTreeMap::from([
        (
            "app.kubernetes.io/part-of".to_owned(),
            "palisade".to_owned(),
        ),
        ("palisade.dev/name".to_owned(), sandbox.spec.name.clone()),
    ]);
    if let Some(policy) = &sandbox.spec.policy {
        labels.insert("palisade.dev/policy".to_owned(), policy.clone());
    }
    object.metadata.labels = Some(labels);
    object
}

/// The gateway's record of a `Sandbox` object; `None` for an object whose
/// name is not a sandbox id (made by hand) or that is being deleted.
fn sandbox_record(object: &crd::Sandbox, gateway_ns: &str) -> Option<Sandbox> {
    // Being deleted (a finalizer holds it): deleted, as far as tokens go.
    if object.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let id = SandboxId::parse(&object.name_any())?;
    let namespace = object.namespace().filter(|ns| ns != gateway_ns);
    Some(Sandbox {
        id,
        spec: SandboxSpec {
            name: object.spec.display_name.clone(),
            namespace,
            service_account: object.spec.service_account.clone(),
            uid: object.spec.uid,
            gid: object.spec.gid,
            policy: object.spec.policy_ref.clone(),
            labels: object.spec.labels.clone(),
            command: object.spec.command.clone(),
        },
        owner: object.spec.owner.clone(),
        created_at: object.spec.created_at,
    })
}

fn bootstrap_secret(hash: &str, record: &BootstrapRecord) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("{BOOTSTRAP_PREFIX}{}", hash.to_ascii_lowercase())),
            labels: Some(BTreeMap::from([(
                SANDBOX_LABEL.to_owned(),
                record.sandbox_id.as_str().to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(BOOTSTRAP_TYPE.to_owned()),
        data: Some(BTreeMap::from([
            (
                "sandboxId".to_owned(),
                ByteString(record.sandbox_id.as_str().as_bytes().to_vec()),
            ),
            (
                "expiresAt".to_owned(),
                ByteString(record.expires_at.to_string().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

fn bootstrap_record(secret: &Secret) -> Result<BootstrapRecord, StoreError> {
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .map(str::to_owned)
    };
    let corrupt = || StoreError::Corrupt(format!("bootstrap Secret {}", secret.name_any()));
    Ok(BootstrapRecord {
        sandbox_id: field("sandboxId")
            .and_then(|s| SandboxId::parse(&s))
            .ok_or_else(corrupt)?,
        expires_at: field("expiresAt")
            .and_then(|s| s.parse().ok())
            .ok_or_else(corrupt)?,
    })
}

/// `None` for a cluster-wide policy (kept in the gateway's namespace with
/// [`CLUSTER_WIDE_LABEL`]).
fn policy_scope(object: &crd::Policy, gateway_ns: &str) -> Option<String> {
    let namespace = object.namespace().unwrap_or_default();
    let cluster_wide = namespace == gateway_ns
        && object.labels().get(CLUSTER_WIDE_LABEL).map(String::as_str) == Some("true");
    (!cluster_wide).then_some(namespace)
}

/// The policy document of an object: what `kubectl apply` would take back.
fn document_of(object: &crd::Policy) -> String {
    let labels: BTreeMap<String, String> = object
        .labels()
        .iter()
        .filter(|(k, _)| !k.starts_with("palisade.dev/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let policy = palisade_policy::Policy {
        api_version: palisade_policy::model::API_VERSION.to_owned(),
        kind: palisade_policy::model::KIND.to_owned(),
        metadata: palisade_policy::model::Metadata {
            name: object.name_any(),
            labels,
        },
        spec: object.spec.0.clone(),
    };
    serde_yaml_ng::to_string(&policy).unwrap_or_default()
}

/// What the gateway serves for a `Policy` object: only a spec it accepted
/// (the stamp is for the current generation).
fn served_policy(object: &crd::Policy, gateway_ns: &str) -> Option<StoredPolicy> {
    let stamp = object.annotations().get(ACCEPTED_ANNOTATION)?;
    let mut parts = stamp.split('/');
    let revision: u64 = parts.next()?.parse().ok()?;
    let generation: i64 = parts.next()?.parse().ok()?;
    let updated_at: u64 = parts.next()?.parse().ok()?;
    if object.metadata.generation.unwrap_or(1) != generation {
        return None;
    }
    let document = document_of(object);
    Some(StoredPolicy {
        name: object.name_any(),
        namespace: policy_scope(object, gateway_ns),
        revision,
        etag: etag(revision, &document),
        document,
        updated_at,
    })
}

impl Store for KubeStore {
    fn create_sandbox(
        &self,
        sandbox: &Sandbox,
        bootstrap_hash: &str,
        bootstrap: &BootstrapRecord,
    ) -> Result<(), StoreError> {
        self.block(self.create_sandbox_async(sandbox, bootstrap_hash, bootstrap))
    }

    fn get_sandbox(&self, id: &SandboxId) -> Result<Option<Sandbox>, StoreError> {
        Ok(self
            .block(self.find_sandbox(id))?
            .and_then(|o| sandbox_record(&o, &self.namespace)))
    }

    fn sandbox_exists_cached(&self, id: &SandboxId) -> Option<bool> {
        // A miss may be a sandbox made on another replica a moment ago, and
        // a stale cache is no answer: ask the API server.
        self.sandboxes.fresh("sandboxes").ok()?;
        self.sandboxes
            .find(id.as_str())
            .iter()
            .any(|o| sandbox_record(o, &self.namespace).is_some())
            .then_some(true)
    }

    fn list_sandboxes(&self) -> Result<Vec<Sandbox>, StoreError> {
        self.sandboxes.fresh("sandboxes")?;
        let mut all: Vec<Sandbox> = self
            .sandboxes
            .all()
            .iter()
            .filter_map(|o| sandbox_record(o, &self.namespace))
            .collect();
        all.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(all)
    }

    fn delete_sandbox(&self, id: &SandboxId) -> Result<bool, StoreError> {
        self.block(self.delete_sandbox_async(id))
    }

    fn put_policy_if(
        &self,
        name: &str,
        namespace: Option<&str>,
        document: &str,
        now: u64,
        precondition: &Precondition,
    ) -> Result<Result<StoredPolicy, Option<String>>, StoreError> {
        self.block(self.put_policy_async(name, namespace, document, now, precondition))
    }

    fn get_policy(&self, name: &str) -> Result<Option<StoredPolicy>, StoreError> {
        Ok(self
            .cached_policy(name)?
            .and_then(|o| served_policy(&o, &self.namespace)))
    }

    fn lookup_bootstrap(&self, hash: &str, now: u64) -> Result<BootstrapLookup, StoreError> {
        self.block(self.lookup_bootstrap_async(hash, now))
    }

    fn consume_bootstrap(&self, hash: &str, now: u64) -> Result<Option<SandboxId>, StoreError> {
        self.block(self.consume_bootstrap_async(hash, now))
    }

    fn prune_bootstrap(&self, now: u64) -> Result<usize, StoreError> {
        self.block(self.prune_bootstrap_async(now))
    }

    fn put_secret(
        &self,
        name: &str,
        data: &BTreeMap<String, String>,
        allowance: &SecretAllowance,
        now: u64,
    ) -> Result<SecretRecord, StoreError> {
        self.block(self.put_secret_async(name, data, allowance, now))
    }

    fn get_secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        self.secrets.fresh("secrets")?;
        self.secrets
            .get(&self.namespace, &format!("{SECRET_PREFIX}{name}"))
            .map(|s| self.secret_record(&s))
            .transpose()
    }

    fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.secrets.fresh("secrets")?;
        let mut all = self
            .secrets
            .all()
            .iter()
            .filter(|s| s.type_.as_deref() == Some(SECRET_TYPE))
            .map(|s| self.secret_record(s))
            .collect::<Result<Vec<_>, _>>()?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        self.block(self.delete_secret_async(name))
    }

    fn list_keys(&self) -> Result<Vec<KeyMeta>, StoreError> {
        Ok(self
            .load_key_material()?
            .map(|m| m.keys)
            .unwrap_or_default())
    }

    fn replace_keys(&self, _keys: &[KeyMeta]) -> Result<(), StoreError> {
        Err(StoreError::Backend(format!(
            "the Kubernetes store keeps keys in Secret {SIGNING_KEYS}; write them with store_key_material"
        )))
    }

    fn load_key_material(&self) -> Result<Option<KeyMaterial>, StoreError> {
        let secret = self
            .block(self.own_secrets().get_opt(SIGNING_KEYS))
            .map_err(|e| backend(status_reason(&e)))?;
        let Some(secret) = secret else {
            return Ok(Some(KeyMaterial {
                version: String::new(),
                keys: Vec::new(),
                pems: BTreeMap::new(),
            }));
        };
        let corrupt = |what: &str| StoreError::Corrupt(format!("Secret {SIGNING_KEYS}: {what}"));
        let mut keys = Vec::new();
        let mut pems = BTreeMap::new();
        for (name, value) in secret.data.iter().flatten() {
            if name == KEYS_KEY {
                keys = serde_json::from_slice(&value.0)
                    .map_err(|e| corrupt(&format!("{KEYS_KEY}: {e}")))?;
            } else if let Some(kid) = name.strip_suffix(".pem") {
                let pem = String::from_utf8(value.0.clone())
                    .map_err(|_| corrupt(&format!("{name} is not UTF-8")))?;
                pems.insert(kid.to_owned(), zeroize::Zeroizing::new(pem));
            }
        }
        Ok(Some(KeyMaterial {
            version: secret.resource_version().unwrap_or_default(),
            keys,
            pems,
        }))
    }

    fn store_key_material(
        &self,
        expected: &str,
        keys: &[KeyMeta],
        pems: &BTreeMap<String, zeroize::Zeroizing<String>>,
    ) -> Result<Option<String>, StoreError> {
        let mut data = BTreeMap::new();
        data.insert(
            KEYS_KEY.to_owned(),
            ByteString(serde_json::to_vec(keys).map_err(|e| StoreError::Corrupt(e.to_string()))?),
        );
        for (kid, pem) in pems {
            data.insert(format!("{kid}.pem"), ByteString(pem.as_bytes().to_vec()));
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(SIGNING_KEYS.to_owned()),
                resource_version: (!expected.is_empty()).then(|| expected.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "palisade".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some(SIGNING_KEYS_TYPE.to_owned()),
            data: Some(data),
            ..Secret::default()
        };
        let api = self.own_secrets();
        let written = self.block(async {
            if expected.is_empty() {
                api.create(&PostParams::default(), &secret).await
            } else {
                api.replace(SIGNING_KEYS, &PostParams::default(), &secret)
                    .await
            }
        });
        match written {
            Ok(w) => Ok(Some(w.resource_version().unwrap_or_default())),
            Err(e) if is_status(&e, 409) => Ok(None),
            // Never quote the request: it holds private keys.
            Err(e) => Err(backend(format!(
                "writing Secret {SIGNING_KEYS}: {}",
                status_reason(&e)
            ))),
        }
    }
}
