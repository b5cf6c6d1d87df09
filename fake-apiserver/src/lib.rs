//! A strict in-process kube-apiserver for tests: the real wire protocol (HTTPS with its
//! own CA, bearer auth, REST paths, `metav1.Status` failures, chunked watches) and the
//! real semantics (one resourceVersion counter, conflicts, generateName, finalizers,
//! ownerReference garbage collection, CRD schema validation with CEL rules, 410 after
//! compaction), driven from tests through kube-rs clients only.
//!
//! Deliberate differences from a real server, so a test never relies on them silently:
//! unknown fields are rejected unless `?fieldValidation=Warn|Ignore` (the real default
//! is Warn); strategic merge patch is applied as a JSON merge patch; server-side apply
//! (`application/apply-patch+yaml`) and `dryRun` are refused; list `limit`/`continue`
//! tokens never expire; no managedFields; no graceful Pod termination (no kubelet: a
//! Pod without finalizers goes at once); removing the last finalizer emits DELETED only
//! (as the real server does), not MODIFIED then DELETED.
//!
//! Module map: [`http`] the wire, [`store`] state and semantics, [`watch`] streams,
//! [`schema`] CRD admission, [`selector`] selectors, [`status`] failure bodies,
//! [`resource`] what is served, [`tls`] the certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

mod http;
mod resource;
mod schema;
mod selector;
mod status;
mod store;
mod tls;
mod watch;

use resource::Registry;
use store::{DeleteOptions, Part, Store};

/// The bearer token clients must present (the kubeconfig carries it); anything else is 401.
pub const CLIENT_TOKEN: &str = "fake-apiserver-client-token-for-the-gateway";

/// How often a watch that asked for bookmarks gets one.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// How long [`FakeApiServer::restart`] refuses connections.
pub const DEFAULT_RESTART_PAUSE: Duration = Duration::from_millis(200);
/// How often the garbage collector settles ownerReferences and terminating namespaces.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_millis(50);

/// A fault to serve every authenticated request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Accept the request and never answer.
    Hang,
    /// Answer every request with a 500 Status.
    Fail500,
}

/// The Kubernetes verb of a request, as audit logs and RBAC name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

/// A write the server refused: the `Status` it would have answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

/// Start-up settings.
#[derive(Debug, Clone)]
pub struct Config {
    bookmark_interval: Duration,
    restart_pause: Duration,
    gc_interval: Duration,
    crds: Vec<Value>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            restart_pause: DEFAULT_RESTART_PAUSE,
            gc_interval: DEFAULT_GC_INTERVAL,
            crds: Vec::new(),
        }
    }
}

impl Config {
    /// How often watches that allow bookmarks get one ([`DEFAULT_BOOKMARK_INTERVAL`]).
    pub fn bookmark_interval(mut self, every: Duration) -> Config {
        self.bookmark_interval = every;
        self
    }

    /// How long [`FakeApiServer::restart`] refuses connections ([`DEFAULT_RESTART_PAUSE`]).
    pub fn restart_pause(mut self, pause: Duration) -> Config {
        self.restart_pause = pause;
        self
    }

    /// How often the garbage collector runs ([`DEFAULT_GC_INTERVAL`]).
    pub fn gc_interval(mut self, every: Duration) -> Config {
        self.gc_interval = every;
        self
    }

    /// Serve the custom resources of these CRD documents (multi-document YAML, as
    /// `kubectl apply -f` takes it). Panics on YAML that is not a CRD this server can serve.
    pub fn crd_yaml(mut self, yaml: &str) -> Config {
        use serde::Deserialize as _;
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("fake-apiserver: CRD YAML does not parse: {e}"));
            if !v.is_null() {
                self.crds.push(v);
            }
        }
        self
    }
}

/// State shared by the accept loop, every connection and the handle.
pub(crate) struct Shared {
    pub config: Config,
    pub registry: Registry,
    pub store: Mutex<Store>,
    pub tls: tokio_rustls::TlsAcceptor,
    pub mode: Mutex<Mode>,
    pub reviews: Mutex<HashMap<String, TokenReviewStatus>>,
    pub requests: Mutex<HashMap<(Verb, String), u64>>,
    pub unauthorized: AtomicU64,
    pub reviews_seen: AtomicU64,
    pub conflicts: AtomicU64,
    pub watches: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Tasks {
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    gc: tokio::task::JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if let Some(s) = self.server.lock().take() {
            s.abort();
        }
        self.gc.abort();
    }
}

/// A running fake apiserver on 127.0.0.1. Clones share it; it stops when the last goes.
#[derive(Debug, Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let mut last = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fake-apiserver: cannot listen on {addr}: {last:?}")
}

fn qualified<K: k8s_openapi::Resource>() -> String {
    if K::GROUP.is_empty() {
        K::URL_PATH_SEGMENT.to_owned()
    } else {
        format!("{}.{}", K::URL_PATH_SEGMENT, K::GROUP)
    }
}

impl FakeApiServer {
    /// Start with the built-in resources only.
    pub async fn start() -> FakeApiServer {
        FakeApiServer::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> FakeApiServer {
        let (tls, ca_pem) = tls::localhost().unwrap_or_else(|e| panic!("{e}"));
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await;
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake-apiserver: no local address: {e}"));
        let shared = Arc::new(Shared {
            registry: Registry::new(&config.crds),
            config,
            store: Mutex::new(Store::new()),
            tls,
            mode: Mutex::new(Mode::Normal),
            reviews: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            unauthorized: AtomicU64::new(0),
            reviews_seen: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            watches: AtomicU64::new(0),
        });
        {
            let mut store = shared.store.lock();
            for crd in &shared.config.crds {
                if let Some(def) = shared
                    .registry
                    .by_name("customresourcedefinitions.apiextensions.k8s.io")
                {
                    // Registered CRDs are readable like on a real cluster.
                    store.seed(&def, crd.clone()).unwrap_or_else(|e| {
                        panic!("fake-apiserver: cannot store a CRD: {}", e.message)
                    });
                }
            }
            if let Some(def) = shared.registry.by_name("namespaces") {
                for ns in ["default", "kube-system", "kube-public"] {
                    store
                        .seed(&def, json!({ "metadata": { "name": ns } }))
                        .unwrap_or_else(|e| panic!("fake-apiserver: {}", e.message));
                }
            }
        }
        let gc = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(shared.config.gc_interval).await;
                    shared.store.lock().collect_garbage(&shared.registry);
                }
            })
        };
        let server = tokio::spawn(http::serve(listener, shared.clone()));
        FakeApiServer {
            addr,
            ca_pem,
            shared,
            tasks: Arc::new(Tasks {
                server: Mutex::new(Some(server)),
                gc,
            }),
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Write `dir/kubeconfig` for this server (its CA, [`CLIENT_TOKEN`]).
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
             {}\n    certificate-authority-data: {ca}\nusers:\n- name: gateway\n  \
             user:\n    token: {CLIENT_TOKEN}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: gateway\ncurrent-context: fake\n",
            self.url()
        );
        let p = dir.join("kubeconfig");
        std::fs::write(&p, text)
            .unwrap_or_else(|e| panic!("fake-apiserver: cannot write {}: {e}", p.display()));
        p
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock() = mode;
    }

    /// Close every connection (open watches included), refuse connections for the
    /// configured pause, then listen again on the same port with the same CA and state.
    pub async fn restart(&self) {
        let old = self.tasks.server.lock().take();
        if let Some(task) = old {
            task.abort();
            // Wait until the listener and connections are really gone.
            let _ = task.await;
        }
        tokio::time::sleep(self.shared.config.restart_pause).await;
        let listener = bind(self.addr).await;
        let task = tokio::spawn(http::serve(listener, self.shared.clone()));
        *self.tasks.server.lock() = Some(task);
    }

    /// Stop serving: every connection closes, no new one is accepted.
    pub async fn stop(&self) {
        let old = self.tasks.server.lock().take();
        if let Some(task) = old {
            task.abort();
            let _ = task.await;
        }
    }

    /// Forget the event history: a watch from any resourceVersion before now gets 410.
    pub fn compact(&self) {
        self.shared.store.lock().compact();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().current_rv()
    }

    /// What a TokenReview of `token` answers (unknown tokens are unauthenticated).
    pub fn review(&self, token: &str, status: TokenReviewStatus) {
        self.shared.reviews.lock().insert(token.to_owned(), status);
    }

    /// TokenReviews received (authorized requests only).
    pub fn reviews_seen(&self) -> u64 {
        self.shared.reviews_seen.load(Ordering::SeqCst)
    }

    /// Requests refused with 401 (wrong or missing bearer token).
    pub fn unauthorized_seen(&self) -> u64 {
        self.shared.unauthorized.load(Ordering::SeqCst)
    }

    /// 409 Conflict answers served (stale resourceVersion, failed preconditions).
    pub fn conflicts_served(&self) -> u64 {
        self.shared.conflicts.load(Ordering::SeqCst)
    }

    pub fn watches_opened(&self) -> u64 {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// Authorized requests of `verb` on `resource` (`pods`, `leases.coordination.k8s.io`,
    /// `widgets.test.palisade.dev`).
    pub fn requests(&self, verb: Verb, resource: &str) -> u64 {
        self.shared
            .requests
            .lock()
            .get(&(verb, resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn def(&self, resource: &str) -> Arc<resource::ResourceDef> {
        self.shared
            .registry
            .by_name(resource)
            .unwrap_or_else(|| panic!("fake-apiserver: no resource {resource:?} is served"))
    }

    /// Create a namespace with these labels (as `kubectl create namespace` would).
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Value {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        self.put_object(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": labels },
        }))
    }

    /// Create `obj`, or replace it unconditionally if it exists (status included), with
    /// every rule of the HTTP path (validation, events, resourceVersion). Panics when the
    /// server refuses it, with the Status message.
    pub fn put_object(&self, obj: Value) -> Value {
        self.try_put_object(obj)
            .unwrap_or_else(|e| panic!("fake-apiserver: put_object refused: {e}"))
    }

    /// [`FakeApiServer::put_object`], with the refusal as a value.
    pub fn try_put_object(&self, obj: Value) -> Result<Value, Refused> {
        let (av, kind) = (
            obj["apiVersion"].as_str().unwrap_or(""),
            obj["kind"].as_str().unwrap_or(""),
        );
        let def = self
            .shared
            .registry
            .by_kind(av, kind)
            .unwrap_or_else(|| panic!("fake-apiserver: no resource serves {av} {kind}"));
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
        let ns = if def.namespaced {
            Some(ns.unwrap_or_else(|| "default".to_owned()))
        } else {
            None
        };
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let mut store = self.shared.store.lock();
        let fv = schema::FieldValidation::Strict;
        let result = match store.get(&def, ns.as_deref(), &name) {
            Err(_) => store.create(&def, ns.as_deref(), obj.clone(), fv).and_then(
                |(created, _)| match obj.get("status") {
                    Some(status) if def.status_subresource => {
                        let mut with = created.clone();
                        with["status"] = status.clone();
                        store.update(&def, ns.as_deref(), &name, Part::Status, fv, |_| Ok(with))
                    }
                    _ => Ok((created, Vec::new())),
                },
            ),
            Ok(_) => {
                let mut body = obj.clone();
                if let Some(m) = body["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                let status = body.get("status").cloned();
                store
                    .update(&def, ns.as_deref(), &name, Part::Main, fv, |_| {
                        Ok(body.clone())
                    })
                    .and_then(|r| match status {
                        Some(s) if def.status_subresource => {
                            let mut with = r.0;
                            with["status"] = s;
                            remove_rv(&mut with);
                            store.update(&def, ns.as_deref(), &name, Part::Status, fv, |_| Ok(with))
                        }
                        _ => Ok(r),
                    })
            }
        };
        result.map(|(v, _)| v).map_err(|e| Refused {
            code: e.code,
            reason: e.reason.to_owned(),
            message: e.message,
        })
    }

    /// One object as stored (`resource` as in [`FakeApiServer::requests`]).
    pub fn get_object(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let def = self.def(resource);
        self.shared.store.lock().get(&def, namespace, name).ok()
    }

    /// Every object of `resource` (in `namespace`, or all).
    pub fn list_objects(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let def = self.def(resource);
        self.shared
            .store
            .lock()
            .list(&def, namespace, &Default::default(), &Default::default())
            .into_iter()
            .map(|(_, o)| o)
            .collect()
    }

    /// Delete as a client would (background propagation, finalizers honoured); false
    /// when there was nothing to delete.
    pub fn delete_object(&self, resource: &str, namespace: Option<&str>, name: &str) -> bool {
        let def = self.def(resource);
        self.shared
            .store
            .lock()
            .delete(&def, namespace, name, &DeleteOptions::default())
            .is_ok()
    }

    /// [`FakeApiServer::put_object`], typed.
    pub fn put<K: k8s_openapi::Resource + Serialize + DeserializeOwned>(&self, obj: &K) -> K {
        let mut v = serde_json::to_value(obj)
            .unwrap_or_else(|e| panic!("fake-apiserver: cannot encode {}: {e}", K::KIND));
        v["apiVersion"] = K::API_VERSION.into();
        v["kind"] = K::KIND.into();
        let stored = self.put_object(v);
        serde_json::from_value(stored)
            .unwrap_or_else(|e| panic!("fake-apiserver: cannot decode {}: {e}", K::KIND))
    }

    /// [`FakeApiServer::get_object`], typed.
    pub fn get<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        self.get_object(&qualified::<K>(), namespace, name)
            .map(|v| {
                serde_json::from_value(v)
                    .unwrap_or_else(|e| panic!("fake-apiserver: cannot decode {}: {e}", K::KIND))
            })
    }

    /// [`FakeApiServer::list_objects`], typed.
    pub fn list<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
    ) -> Vec<K> {
        self.list_objects(&qualified::<K>(), namespace)
            .into_iter()
            .map(|v| {
                serde_json::from_value(v)
                    .unwrap_or_else(|e| panic!("fake-apiserver: cannot decode {}: {e}", K::KIND))
            })
            .collect()
    }
}

fn remove_rv(v: &mut Value) {
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
}
