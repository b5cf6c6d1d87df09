//! The object store: every object as JSON keyed by resource, namespace and name; the one
//! global resourceVersion counter; the event history watches start from (and its
//! compaction point); finalizers, deletion and the garbage collector (ownerReferences,
//! propagation policies, namespace termination). Owns every state change; knows nothing
//! of HTTP.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::resource::{Registry, ResourceDef};
use crate::schema::{FieldValidation, Verdict};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Cause};

/// Events kept for watches to resume from; older ones are compacted away (410 Expired).
const HISTORY_LIMIT: usize = 10_000;
/// Broadcast buffer per watcher; one that falls this far behind is sent 410 and must relist.
const BROADCAST_CAPACITY: usize = 4096;

/// (storage id, namespace or "", name).
pub(crate) type Key = (String, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug)]
pub(crate) struct Record {
    pub rv: u64,
    pub storage: String,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
    /// The state before a MODIFIED (for selector transitions).
    pub previous: Option<Value>,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
}

/// `DeleteOptions.propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// The parts of `DeleteOptions` this server honours.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation: Option<Propagation>,
}

impl DeleteOptions {
    pub(crate) fn parse(body: &Value) -> Result<DeleteOptions, ApiError> {
        let propagation = match body["propagationPolicy"].as_str() {
            None => match body["orphanDependents"].as_bool() {
                Some(true) => Some(Propagation::Orphan),
                Some(false) => Some(Propagation::Background),
                None => None,
            },
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some("Orphan") => Some(Propagation::Orphan),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "DeleteOptions.propagationPolicy: Unsupported value: \"{other}\": supported values: \"Background\", \"Foreground\", \"Orphan\""
                )));
            }
        };
        Ok(DeleteOptions {
            uid: body["preconditions"]["uid"].as_str().map(str::to_owned),
            resource_version: body["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_owned),
            propagation,
        })
    }
}

/// What a DELETE did.
#[derive(Debug)]
pub(crate) enum Deleted {
    /// Removed now (the last state, with the deletion's resourceVersion).
    Gone(Value),
    /// Marked (deletionTimestamp) and waiting for finalizers.
    Pending(Value),
}

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// RFC 3339 in whole seconds, UTC, as metav1.Time serialises.
pub(crate) fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"].as_str()
}

fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = v;
}

fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove(field);
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn set_finalizers(obj: &mut Value, list: &[String]) {
    if list.is_empty() {
        remove_meta(obj, "finalizers");
    } else {
        set_meta(obj, "finalizers", json!(list));
    }
}

fn deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: what namespace names must be.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
        && s.chars().all(|c| is_alnum(c) || c == '-')
}

/// RFC 1123 subdomain: what most object names must be. As apimachinery's
/// `IsDNS1123Subdomain`: at most 253 characters in all, each dot-separated
/// part alphanumeric at both ends with `-` inside (no per-part length limit).
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(is_alnum)
                && part.ends_with(is_alnum)
                && part.chars().all(|c| is_alnum(c) || c == '-')
        })
}

/// A label value (or the name part of a key): ≤63, alphanumeric ends, `-_.` inside.
fn label_name(s: &str, may_be_empty: bool) -> bool {
    let an = |c: char| c.is_ascii_alphanumeric();
    if s.is_empty() {
        return may_be_empty;
    }
    s.len() <= 63
        && s.starts_with(an)
        && s.ends_with(an)
        && s.chars().all(|c| an(c) || matches!(c, '-' | '_' | '.'))
}

fn metadata_causes(def: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let ok = if def.plural == "namespaces" {
        dns_label(name)
    } else {
        dns_subdomain(name)
    };
    if !ok {
        let what = if def.plural == "namespaces" {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        };
        causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: \"{name}\": {what}"),
        ));
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            let (prefix, key_name) = k.rsplit_once('/').map_or(("", k.as_str()), |(p, n)| (p, n));
            if !label_name(key_name, false) || (!prefix.is_empty() && !dns_subdomain(prefix)) {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                ));
            }
            match v.as_str() {
                Some(s) if label_name(s, true) => {}
                _ => causes.push(Cause::new(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                )),
            }
        }
    }
    causes
}

/// Everything but metadata (and status, where status is a subresource): what `generation` tracks.
fn spec_part(def: &ResourceDef, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if def.status_subresource {
            m.remove("status");
        }
    }
    v
}

/// The in-memory apiserver state.
#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Record>>,
    /// Watches from a resourceVersion older than this get 410 Expired.
    compacted: u64,
    tx: broadcast::Sender<Arc<Record>>,
}

impl Store {
    pub(crate) fn new() -> Store {
        Store {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
        }
    }

    pub(crate) fn current_rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Forget the history: every resourceVersion before now is too old to watch from.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.tx.subscribe()
    }

    /// Recorded changes after `rv` (the caller checked it is not compacted).
    pub(crate) fn since(&self, rv: u64) -> Vec<Arc<Record>> {
        self.history.iter().filter(|r| r.rv > rv).cloned().collect()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(&mut self, key: &Key, kind: EventType, object: Value, previous: Option<Value>) {
        let record = Arc::new(Record {
            rv: self.rv,
            storage: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object,
            previous,
        });
        self.history.push_back(record.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receiver is fine: nobody is watching.
        let _ = self.tx.send(record);
    }

    fn key(def: &ResourceDef, ns: Option<&str>, name: &str) -> Key {
        (
            def.storage_id(),
            ns.unwrap_or("").to_owned(),
            name.to_owned(),
        )
    }

    /// The object as served at `def`'s version.
    pub(crate) fn present(def: &ResourceDef, mut obj: Value) -> Value {
        obj["apiVersion"] = def.api_version().into();
        obj["kind"] = def.kind.clone().into();
        obj
    }

    pub(crate) fn get(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(&Store::key(def, ns, name))
            .cloned()
            .map(|o| Store::present(def, o))
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    /// Matching objects (all namespaces when `ns` is None), in key order, after `from`.
    pub(crate) fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<((String, String), Value)> {
        let id = def.storage_id();
        self.objects
            .iter()
            .filter(|((s, n, _), o)| {
                *s == id && ns.is_none_or(|ns| ns == n) && labels.matches(o) && fields.matches(o)
            })
            .map(|((_, n, name), o)| ((n.clone(), name.clone()), Store::present(def, o.clone())))
            .collect()
    }

    /// Is `ns` there, and is it terminating?
    fn namespace(&self, ns: &str) -> Option<bool> {
        self.objects
            .get(&("namespaces".to_owned(), String::new(), ns.to_owned()))
            .map(deleting)
    }

    fn check_kind(def: &ResourceDef, body: &Value) -> Result<(), ApiError> {
        let (av, kind) = (body["apiVersion"].as_str(), body["kind"].as_str());
        if av.is_some_and(|a| a != def.api_version()) || kind.is_some_and(|k| k != def.kind) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                av.unwrap_or(""),
                def.api_version()
            ))
            .with_kind_mismatch(kind.unwrap_or(""), &def.kind));
        }
        Ok(())
    }

    /// Server-side normalisation every write of this kind gets.
    fn normalize(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
        if def.storage_id() == "secrets" {
            if let Some(string_data) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
                let Some(sd) = string_data.as_object() else {
                    return Err(ApiError::bad_request("Secret.stringData must be an object"));
                };
                if !obj["data"].is_object() {
                    obj["data"] = json!({});
                }
                for (k, v) in sd {
                    let text = v.as_str().unwrap_or_default();
                    obj["data"][k] = base64::engine::general_purpose::STANDARD
                        .encode(text.as_bytes())
                        .into();
                }
            }
            if obj["type"].is_null() {
                obj["type"] = "Opaque".into();
            }
        }
        Ok(())
    }

    /// Decode (built-ins) or schema-admit (CRs), plus metadata rules: 400 or 422 on failure.
    fn admit(
        def: &ResourceDef,
        obj: &mut Value,
        old: Option<&Value>,
        fv: FieldValidation,
    ) -> Result<Vec<String>, ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if let Some(typed) = def.typed
            && let Err(e) = typed(obj)
        {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                def.kind, def.version, def.kind
            )));
        }
        let mut verdict = Verdict::default();
        if let Some(schema) = &def.schema {
            verdict = schema.admit(obj, old, fv);
        }
        let mut causes = metadata_causes(def, obj);
        causes.extend(verdict.causes);
        if def.storage_id() == "pods"
            && obj["spec"]["containers"]
                .as_array()
                .is_none_or(Vec::is_empty)
        {
            causes.push(Cause::new(
                "FieldValueRequired",
                "spec.containers",
                "Required value",
            ));
        }
        if causes.is_empty() {
            Ok(verdict.warnings)
        } else {
            Err(ApiError::invalid(def, &name, &causes))
        }
    }

    /// Create at start-up (no namespace needed for cluster-scoped seeds).
    pub(crate) fn seed(&mut self, def: &ResourceDef, obj: Value) -> Result<Value, ApiError> {
        self.create(def, None, obj, FieldValidation::Strict)
            .map(|(v, _)| v)
    }

    /// POST: the created object and any warnings.
    pub(crate) fn create(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        fv: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Store::check_kind(def, &obj)?;
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let meta = obj["metadata"].clone();
        if let (Some(body_ns), Some(ns)) = (meta["namespace"].as_str(), ns)
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if meta["resourceVersion"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
        {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
            (Some(n), _) if !n.is_empty() => n.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => {
                const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                let suffix: String = (0..5)
                    .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
                    .collect();
                format!("{prefix}{suffix}")
            }
            _ => {
                return Err(ApiError::invalid(
                    def,
                    "",
                    &[Cause::new(
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )],
                ));
            }
        };
        if def.namespaced {
            let Some(ns) = ns else {
                return Err(ApiError::bad_request(
                    "a namespaced resource needs a namespace",
                ));
            };
            match self.namespace(ns) {
                None => return Err(ApiError::namespace_not_found(ns)),
                Some(true) => {
                    return Err(ApiError::forbidden(
                        def,
                        &name,
                        &format!(
                            "unable to create new content in namespace {ns} because it is being terminated"
                        ),
                    ));
                }
                Some(false) => {}
            }
        }
        let key = Store::key(def, ns, &name);
        set_meta(&mut obj, "name", name.clone().into());
        if let Some(ns) = ns {
            set_meta(&mut obj, "namespace", ns.into());
        }
        for system in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            remove_meta(&mut obj, system);
        }
        set_meta(&mut obj, "uid", uuid::Uuid::new_v4().to_string().into());
        set_meta(&mut obj, "creationTimestamp", now().into());
        if def.has_generation {
            set_meta(&mut obj, "generation", 1.into());
        } else {
            remove_meta(&mut obj, "generation");
        }
        obj = Store::present(def, obj);
        if def.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        match def.storage_id().as_str() {
            "namespaces" => {
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name.clone().into();
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
                obj["status"] = json!({ "phase": "Active" });
            }
            "pods" => {
                for (k, v) in [
                    ("restartPolicy", json!("Always")),
                    ("dnsPolicy", json!("ClusterFirst")),
                    ("schedulerName", json!("default-scheduler")),
                    ("terminationGracePeriodSeconds", json!(30)),
                ] {
                    if obj["spec"].is_object() && obj["spec"][k].is_null() {
                        obj["spec"][k] = v;
                    }
                }
                obj["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
            }
            _ => {}
        }
        Store::normalize(def, &mut obj)?;
        let warnings = Store::admit(def, &mut obj, None, fv)?;
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(def, &name));
        }
        let rv = self.next_rv();
        set_meta(&mut obj, "resourceVersion", rv.to_string().into());
        self.objects.insert(key.clone(), obj.clone());
        self.emit(&key, EventType::Added, obj.clone(), None);
        Ok((obj, warnings))
    }

    /// PUT and PATCH: `f` turns the stored object into the requested one; the usual
    /// preconditions, subresource rules, validation and finalizer rules follow.
    pub(crate) fn update(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        part: Part,
        fv: FieldValidation,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let key = Store::key(def, ns, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(def, name));
        };
        let old = Store::present(def, old);
        let mut new = f(&old)?;
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Store::check_kind(def, &new)?;
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        if let Some(n) = new["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if let (Some(body_ns), Some(ns)) = (new["metadata"]["namespace"].as_str(), ns)
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let Some(rv) = rv_of(&new)
            && Some(rv) != rv_of(&old)
        {
            return Err(ApiError::conflict(def, name, ApiError::MODIFIED));
        }
        if let Some(uid) = new["metadata"]["uid"].as_str()
            && Some(uid) != old["metadata"]["uid"].as_str()
        {
            return Err(ApiError::conflict(
                def,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old["metadata"]["uid"].as_str().unwrap_or("")
                ),
            ));
        }
        match part {
            Part::Main if def.status_subresource => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            Part::Main => {}
            Part::Status => {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
        }
        for system in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ] {
            match old["metadata"].get(system) {
                Some(v) => set_meta(&mut new, system, v.clone()),
                None => remove_meta(&mut new, system),
            }
        }
        let mut new = Store::present(def, new);
        if def.storage_id() == "namespaces" {
            new["spec"] = old["spec"].clone();
        }
        Store::normalize(def, &mut new)?;
        if deleting(&old) {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                let list: Vec<String> = added.iter().map(|f| format!("{f:?}")).collect();
                return Err(ApiError::invalid(
                    def,
                    name,
                    &[Cause::new(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                            list.join(", ")
                        ),
                    )],
                ));
            }
        }
        let warnings = Store::admit(def, &mut new, Some(&old), fv)?;
        if def.has_generation && spec_part(def, &new) != spec_part(def, &old) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            set_meta(&mut new, "generation", g.into());
        }
        Ok((self.commit(&key, &old, new), warnings))
    }

    /// Store `new` over `old` (same key): nothing when unchanged; removal when a deleting
    /// object has no finalizers left; otherwise a new resourceVersion and MODIFIED.
    fn commit(&mut self, key: &Key, old: &Value, mut new: Value) -> Value {
        if &new == old {
            return new;
        }
        let rv = self.next_rv();
        set_meta(&mut new, "resourceVersion", rv.to_string().into());
        if deleting(&new) && finalizers(&new).is_empty() && key.0 != "namespaces" {
            self.objects.remove(key);
            self.emit(key, EventType::Deleted, new.clone(), None);
            return new;
        }
        self.objects.insert(key.clone(), new.clone());
        self.emit(key, EventType::Modified, new.clone(), Some(old.clone()));
        new
    }

    /// DELETE with its options.
    pub(crate) fn delete(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let key = Store::key(def, ns, name);
        let Some(old) = self.objects.get(&key) else {
            return Err(ApiError::not_found(def, name));
        };
        let meta = &old["metadata"];
        if let Some(uid) = &opts.uid
            && meta["uid"].as_str() != Some(uid)
        {
            return Err(ApiError::conflict(
                def,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta["uid"].as_str().unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && meta["resourceVersion"].as_str() != Some(rv)
        {
            return Err(ApiError::conflict(
                def,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta["resourceVersion"].as_str().unwrap_or("")
                ),
            ));
        }
        let extra = match opts.propagation {
            Some(Propagation::Orphan) => Some(ORPHAN),
            Some(Propagation::Foreground) => Some(FOREGROUND),
            Some(Propagation::Background) | None => None,
        };
        Ok(match self.begin_delete(&key, extra) {
            Deleted::Gone(o) => Deleted::Gone(Store::present(def, o)),
            Deleted::Pending(o) => Deleted::Pending(Store::present(def, o)),
        })
    }

    /// Delete what is at `key` (it exists): now, or mark it and leave it to finalizers.
    fn begin_delete(&mut self, key: &Key, extra: Option<&str>) -> Deleted {
        let Some(old) = self.objects.get(key).cloned() else {
            return Deleted::Gone(Value::Null);
        };
        if deleting(&old) {
            return Deleted::Pending(old);
        }
        let mut list = finalizers(&old);
        if let Some(f) = extra
            && !list.iter().any(|x| x == f)
        {
            list.push(f.to_owned());
        }
        let mut new = old.clone();
        if key.0 == "namespaces" || !list.is_empty() {
            set_meta(&mut new, "deletionTimestamp", now().into());
            set_meta(&mut new, "deletionGracePeriodSeconds", 0.into());
            set_finalizers(&mut new, &list);
            if key.0 == "namespaces" {
                new["status"]["phase"] = "Terminating".into();
            }
            return Deleted::Pending(self.commit(key, &old, new));
        }
        let rv = self.next_rv();
        set_meta(&mut new, "resourceVersion", rv.to_string().into());
        self.objects.remove(key);
        self.emit(key, EventType::Deleted, new.clone(), None);
        Deleted::Gone(new)
    }

    /// One garbage-collector pass: ownerReferences, orphan / foreground finalizers and
    /// terminating namespaces, as the kube-controller-manager would settle them.
    pub(crate) fn collect_garbage(&mut self, registry: &Registry) {
        // uid → (key, finalizers while deleting).
        let owners: HashMap<String, (Key, Option<Vec<String>>)> = self
            .objects
            .iter()
            .filter_map(|(k, o)| {
                let uid = o["metadata"]["uid"].as_str()?.to_owned();
                Some((uid, (k.clone(), deleting(o).then(|| finalizers(o)))))
            })
            .collect();
        let dependents: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
            })
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (key, obj) in dependents {
            let refs = obj["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let (mut keep, mut drop, mut delete) = (Vec::new(), false, false);
            for r in refs {
                let owner = r["uid"]
                    .as_str()
                    .and_then(|u| owners.get(u))
                    .filter(|(k, _)| k.1.is_empty() || k.1 == key.1);
                match owner {
                    None => {
                        drop = true;
                        delete = true;
                    }
                    Some((_, Some(fins))) if fins.iter().any(|f| f == ORPHAN) => drop = true,
                    Some((_, Some(fins))) if fins.iter().any(|f| f == FOREGROUND) => {
                        delete = true;
                        keep.push(r);
                    }
                    Some(_) => keep.push(r),
                }
            }
            let solid = keep.iter().any(|r| {
                r["uid"]
                    .as_str()
                    .and_then(|u| owners.get(u))
                    .is_some_and(|(_, d)| d.is_none())
            });
            if solid || !delete {
                if drop {
                    let mut new = obj.clone();
                    if keep.is_empty() {
                        remove_meta(&mut new, "ownerReferences");
                    } else {
                        set_meta(&mut new, "ownerReferences", Value::Array(keep));
                    }
                    self.commit(&key, &obj, new);
                }
            } else if !deleting(&obj) {
                self.begin_delete(&key, None);
            }
        }
        // Owners waiting on the collector: drop `orphan` / `foregroundDeletion` once no
        // dependent points at them.
        let waiting: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                deleting(o) && finalizers(o).iter().any(|f| f == ORPHAN || f == FOREGROUND)
            })
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (key, obj) in waiting {
            let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
            let referenced = self.objects.values().any(|o| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|r| r["uid"] == uid))
            });
            if !referenced {
                let list: Vec<String> = finalizers(&obj)
                    .into_iter()
                    .filter(|f| f != ORPHAN && f != FOREGROUND)
                    .collect();
                let mut new = obj.clone();
                set_finalizers(&mut new, &list);
                self.commit(&key, &obj, new);
            }
        }
        // Terminating namespaces: delete their content, then themselves.
        let terminating: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, o)| k.0 == "namespaces" && deleting(o))
            .map(|(k, _)| k.clone())
            .collect();
        for ns_key in terminating {
            let ns = ns_key.2.clone();
            let content: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.1 == ns && registry.by_name(&k.0).is_some_and(|d| d.namespaced))
                .cloned()
                .collect();
            if content.is_empty() {
                if let Some(mut last) = self.objects.remove(&ns_key) {
                    let rv = self.next_rv();
                    set_meta(&mut last, "resourceVersion", rv.to_string().into());
                    self.emit(&ns_key, EventType::Deleted, last, None);
                }
            } else {
                for k in content {
                    self.begin_delete(&k, None);
                }
            }
        }
    }
}

impl ApiError {
    fn with_kind_mismatch(self, got: &str, want: &str) -> ApiError {
        if got.is_empty() || got == want {
            self
        } else {
            ApiError::bad_request(format!(
                "the kind in the data ({got}) does not match the expected kind ({want})"
            ))
        }
    }
}
