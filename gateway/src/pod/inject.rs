//! `palisade inject`: the sandbox topology added to the pod template of a
//! Pod, Deployment, StatefulSet, Job or CronJob (multi-document YAML, `List`s
//! too), through the same [`wrap`](super::render) as `sandbox render`.
//!
//! Documents of other kinds pass through unchanged, and so does a pod
//! template that is already injected (it has the `palisade-sidecar`
//! container and the `palisade.dev/topology` annotation): injecting twice is
//! a no-op. The pod spec is read with the `k8s-openapi` types and written
//! back from them; a field those types do not know is refused rather than
//! dropped.
//!
//! Must never: drop or change a field of the user's manifest other than the
//! ones the topology owns (the agent container's command and args, security
//! contexts hardened, Palisade's volumes, containers, labels and
//! annotations), or accept what [`wrap`](super::render) refuses.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use palisade_api::{Sandbox, SandboxId, SandboxSpec};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::render::{PolicyRef, Target, wrap};
use super::settings::{PodSettings, Topology};
use super::{INIT_CONTAINER, RenderError, SIDECAR_CONTAINER, TOPOLOGY_ANNOTATION, validate};
use crate::driver::plan::PolicySource;

/// What `inject` needs besides the [`PodSettings`].
#[derive(Debug, Clone, Default)]
pub struct InjectOptions<'a> {
    /// The sandbox the workload's pods run as (required with the gateway
    /// policy source; a fresh one per workload for the file source).
    pub sandbox_id: Option<SandboxId>,
    /// The policy name on the gateway (default: the policy document's name).
    pub policy_name: Option<String>,
    pub policy: PolicyRef<'a>,
    /// The namespace's annotations (OpenShift SCC ranges).
    pub namespace_annotations: BTreeMap<String, String>,
    /// The container the shim wraps (default: the pod's
    /// `kubectl.kubernetes.io/default-container`, else the first).
    pub agent_container: Option<&'a str>,
    /// The principal the workload belongs to (annotation `palisade.dev/owner`).
    pub owner: Option<&'a str>,
}

/// What [`inject`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The documents, injected, with a ConfigMap before each workload that
    /// needs one.
    pub yaml: String,
    /// Workloads injected now.
    pub injected: usize,
    /// Workloads that were injected already (left as they were).
    pub already_injected: usize,
    pub warnings: Vec<String>,
}

/// Why a manifest cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("cannot read the manifest as YAML: {0}")]
    Yaml(String),
    #[error("document {index} ({what}): {message}")]
    Document {
        /// 1-based position in the stream.
        index: usize,
        /// `Deployment web` (kind and name).
        what: String,
        message: String,
    },
    #[error("{0}")]
    Options(String),
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str, api_version: &str) -> Option<Result<&'static [&'static str], String>> {
    let want = match kind {
        "Pod" => ("v1", &[][..]),
        "Deployment" | "StatefulSet" => ("apps/v1", &["spec", "template"][..]),
        "Job" => ("batch/v1", &["spec", "template"][..]),
        "CronJob" => ("batch/v1", &["spec", "jobTemplate", "spec", "template"][..]),
        _ => return None,
    };
    Some(if api_version == want.0 {
        Ok(want.1)
    } else {
        Err(format!(
            "apiVersion `{api_version}` is not supported for {kind}; use {}",
            want.0
        ))
    })
}

fn get_mut<'v>(v: &'v mut Value, path: &[&str]) -> Option<&'v mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(*k))
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Numbers in resource maps as strings (`cpu: 1` is a valid manifest, and
/// `Quantity` is a string).
fn normalize_quantities(v: &mut Value, quantities: bool) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m.iter_mut() {
                let key = k.as_str().unwrap_or("");
                if (quantities || key == "sizeLimit")
                    && let Value::Number(n) = child
                {
                    *child = Value::String(n.to_string());
                    continue;
                }
                normalize_quantities(child, matches!(key, "limits" | "requests" | "overhead"));
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(|c| normalize_quantities(c, false)),
        _ => {}
    }
}

/// The first place where `original` has something `typed` (its round trip
/// through the typed API) does not: a field the types do not know.
fn first_lost(original: &Value, typed: &Value, path: &str) -> Option<String> {
    match (original, typed) {
        (Value::Null, _) => None,
        (Value::Mapping(a), Value::Mapping(b)) => a.iter().find_map(|(k, va)| {
            let key = k
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{k:?}"));
            let here = format!("{path}.{key}");
            match b.get(k) {
                Some(vb) => first_lost(va, vb, &here),
                None if va.is_null() => None,
                None => Some(here),
            }
        }),
        (Value::Mapping(a), _) if a.is_empty() => None,
        (Value::Sequence(a), Value::Sequence(b)) => {
            if a.len() != b.len() {
                return Some(path.to_owned());
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (va, vb))| first_lost(va, vb, &format!("{path}[{i}]")))
        }
        (Value::Sequence(a), _) if a.is_empty() => None,
        (a, b) if a == b => None,
        _ => Some(path.to_owned()),
    }
}

/// A string map of `meta` (`labels`, `annotations`).
fn string_map(
    meta: &Value,
    key: &str,
    path: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    if v.is_null() {
        return Ok(None);
    }
    let m = v
        .as_mapping()
        .ok_or_else(|| format!("{path}.{key}: not a map"))?;
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
            return Err(format!(
                "{path}.{key}: keys and values must be strings (quote `{}`)",
                serde_yaml_ng::to_string(k).unwrap_or_default().trim()
            ));
        };
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(Some(out))
}

/// The workload a pod template belongs to.
#[derive(Debug)]
struct Workload<'a> {
    /// Field path of the template in the document (`spec.template`; empty
    /// for a Pod).
    template_path: &'a str,
    kind: &'a str,
    name: &'a str,
    namespace: Option<&'a str>,
    id: SandboxId,
}

/// One pod template, injected.
#[derive(Debug)]
struct InjectedTemplate {
    /// The sidecar's ConfigMap, to go before the workload.
    config_map: Option<Value>,
    warnings: Vec<String>,
}

/// Inject one pod template in place. `Ok(None)`: already injected.
fn inject_template(
    template: &mut Value,
    workload: Workload<'_>,
    settings: &PodSettings,
    opts: &InjectOptions<'_>,
) -> Result<Option<InjectedTemplate>, String> {
    let Workload {
        template_path,
        kind,
        name,
        namespace,
        id,
    } = workload;
    let spec_path = if template_path.is_empty() {
        "spec".to_owned()
    } else {
        format!("{template_path}.spec")
    };
    let meta_path = if template_path.is_empty() {
        "metadata".to_owned()
    } else {
        format!("{template_path}.metadata")
    };
    let Some(spec_value) = template.get_mut("spec") else {
        return Err(format!("{spec_path}: missing"));
    };
    normalize_quantities(spec_value, false);
    let original = spec_value.clone();
    let mut spec = PodSpec::deserialize(original.clone())
        .map_err(|e| format!("{spec_path}: not a valid pod spec: {e}"))?;
    let typed = serde_yaml_ng::to_value(&spec).map_err(|e| format!("{spec_path}: {e}"))?;
    if let Some(lost) = first_lost(&original, &typed, &spec_path) {
        return Err(format!(
            "{lost}: a field palisade inject does not know (it reads pod specs with the \
             Kubernetes 1.34 types and never drops a field silently); remove it or inject by hand"
        ));
    }

    let meta_value = template
        .get("metadata")
        .cloned()
        .unwrap_or(Value::Mapping(Mapping::new()));
    let mut meta = ObjectMeta {
        labels: string_map(&meta_value, "labels", &meta_path)?,
        annotations: string_map(&meta_value, "annotations", &meta_path)?,
        ..ObjectMeta::default()
    };

    // Injected already?
    let all: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    let marked = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(TOPOLOGY_ANNOTATION));
    let has_sidecar = all.contains(&SIDECAR_CONTAINER);
    if marked && has_sidecar && all.contains(&INIT_CONTAINER) {
        return Ok(None);
    }
    if marked || has_sidecar {
        return Err(format!(
            "{meta_path}: partly injected (the {TOPOLOGY_ANNOTATION} annotation, the \
             {INIT_CONTAINER} and the {SIDECAR_CONTAINER} containers must all be there); inject \
             the original manifest"
        ));
    }

    if matches!(kind, "Job" | "CronJob") && settings.topology == Topology::Classic {
        return Err(format!(
            "a {kind} with --topology classic would never complete: its pod ends when every \
             container has exited, and a classic sidecar does not stop when the agent does. \
             Use --topology native (Kubernetes >= 1.29: the kubelet stops a native sidecar \
             after the agent)"
        ));
    }

    let default_container = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .cloned();
    let want = opts
        .agent_container
        .map(str::to_owned)
        .or(default_container);
    let mut warnings = Vec::new();
    let agent = match &want {
        Some(n) => spec
            .containers
            .iter()
            .position(|c| c.name == *n)
            .ok_or_else(|| {
                format!("{spec_path}.containers: no container named `{n}` (the agent container)")
            })?,
        None => {
            if spec.containers.len() > 1 {
                warnings.push(format!(
                    "{spec_path}.containers: the shim wraps the first container, `{}`; the \
                     others are hardened and captured but not wrapped (--agent-container picks \
                     another)",
                    spec.containers[0].name
                ));
            }
            0
        }
    };
    let Some(c) = spec.containers.get(agent) else {
        return Err(format!("{spec_path}.containers: empty"));
    };
    let Some(command) = c.command.clone().filter(|c| !c.is_empty()) else {
        return Err(format!(
            "{spec_path}.containers[{agent}].command: palisade inject needs the container's \
             command: palisade-shim runs it, and the image's ENTRYPOINT is not in the \
             manifest; set command (and args)"
        ));
    };
    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        warnings.push(format!(
            "{spec_path}.containers[{agent}].envFrom: make sure it sets no PALISADE_* \
             variable (they configure palisade-shim, e.g. PALISADE_ALLOW_INSECURE)"
        ));
    }
    let mut full = command;
    full.extend(c.args.clone().unwrap_or_default());

    if !validate::is_label_value(name) {
        return Err(format!(
            "metadata.name `{name}` cannot be a label value (at most 63 letters, digits, `-`, \
             `_`, `.`); the pods carry it as {}",
            super::SANDBOX_NAME_LABEL
        ));
    }
    let sandbox = Sandbox {
        id,
        spec: SandboxSpec {
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
            policy: opts.policy_name.clone(),
            command: full,
            ..SandboxSpec::default()
        },
        owner: opts.owner.unwrap_or_default().to_owned(),
        created_at: 0,
    };
    let wrapped = wrap(
        &mut spec,
        &mut meta,
        &Target {
            sandbox: &sandbox,
            policy: &opts.policy,
            namespace_annotations: &opts.namespace_annotations,
            agent,
            agent_home: false,
            spec_path: &spec_path,
            object_name: name,
            namespace,
        },
        settings,
    )
    .map_err(|e| match e {
        RenderError::Refused { field, reason } => format!("{field}: {reason}"),
        other => other.to_string(),
    })?;
    warnings.extend(wrapped.warnings);

    // Write back: the spec from the typed value, labels and annotations into
    // the metadata the user wrote (other keys kept).
    let spec_value = serde_yaml_ng::to_value(&spec).map_err(|e| e.to_string())?;
    let Value::Mapping(t) = template else {
        return Err(format!("{template_path}: not a map"));
    };
    t.insert(Value::from("spec"), spec_value);
    let meta_entry = t
        .entry(Value::from("metadata"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if meta_entry.is_null() {
        *meta_entry = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(m) = meta_entry else {
        return Err(format!("{meta_path}: not a map"));
    };
    for (key, map) in [("labels", meta.labels), ("annotations", meta.annotations)] {
        if let Some(map) = map {
            let v = serde_yaml_ng::to_value(map).map_err(|e| e.to_string())?;
            m.insert(Value::from(key), v);
        }
    }
    let cm = wrapped
        .config_map
        .map(|cm| serde_yaml_ng::to_value(cm).map_err(|e| e.to_string()))
        .transpose()?;
    Ok(Some(InjectedTemplate {
        config_map: cm,
        warnings,
    }))
}

#[derive(Debug, Default)]
struct Tally {
    injected: usize,
    already: usize,
    warnings: Vec<String>,
}

/// Inject one document (recursing into `List` items). Returns the documents
/// that replace it.
fn inject_document(
    doc: Value,
    index: usize,
    settings: &PodSettings,
    opts: &InjectOptions<'_>,
    tally: &mut Tally,
) -> Result<Vec<Value>, InjectError> {
    let kind = str_field(&doc, "kind").unwrap_or_default();
    let api_version = str_field(&doc, "apiVersion").unwrap_or_default();
    let name = doc
        .get("metadata")
        .and_then(|m| str_field(m, "name"))
        .unwrap_or_default();
    let what = if name.is_empty() {
        kind.clone()
    } else {
        format!("{kind} {name}")
    };
    let err = |message: String| InjectError::Document {
        index,
        what: what.clone(),
        message,
    };
    if kind == "List" {
        let mut doc = doc;
        let Some(Value::Sequence(items)) = doc.get_mut("items").map(std::mem::take) else {
            return Err(err("items: a List needs an items list".to_owned()));
        };
        let mut out = Vec::new();
        for item in items {
            out.extend(inject_document(item, index, settings, opts, tally)?);
        }
        if let Some(slot) = doc.get_mut("items") {
            *slot = Value::Sequence(out);
        }
        return Ok(vec![doc]);
    }
    let path = match template_path(&kind, &api_version) {
        None => return Ok(vec![doc]),
        Some(Err(message)) => return Err(err(message)),
        Some(Ok(path)) => path,
    };
    if name.is_empty() {
        return Err(err(
            "metadata.name: needed (the sandbox and its ConfigMap are named after it)".to_owned(),
        ));
    }
    let namespace = doc.get("metadata").and_then(|m| str_field(m, "namespace"));
    let id = match (&opts.sandbox_id, settings.policy_source) {
        (Some(id), _) => id.clone(),
        (None, PolicySource::File) => SandboxId::generate(),
        (None, PolicySource::Gateway) => {
            return Err(InjectError::Options(
                "--sandbox-id is needed with the gateway policy source: the gateway admits \
                 the pods of a registered sandbox only (palisade sandbox create prints its id)"
                    .to_owned(),
            ));
        }
    };
    let mut doc = doc;
    let template_path_str = path.join(".");
    let Some(template) = get_mut(&mut doc, path) else {
        return Err(err(format!("{template_path_str}: missing")));
    };
    let workload = Workload {
        template_path: &template_path_str,
        kind: &kind,
        name: &name,
        namespace: namespace.as_deref(),
        id,
    };
    match inject_template(template, workload, settings, opts).map_err(err)? {
        None => {
            tally.already += 1;
            Ok(vec![doc])
        }
        Some(done) => {
            tally.injected += 1;
            tally
                .warnings
                .extend(done.warnings.into_iter().map(|w| format!("{what}: {w}")));
            Ok(done.config_map.into_iter().chain([doc]).collect())
        }
    }
}

/// Inject every workload of the YAML stream `input`.
pub fn inject(
    input: &str,
    settings: &PodSettings,
    opts: &InjectOptions<'_>,
) -> Result<Injected, InjectError> {
    settings
        .check()
        .map_err(|e| InjectError::Options(e.to_string()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(input) {
        let value = Value::deserialize(doc).map_err(|e| InjectError::Yaml(e.to_string()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let workloads = docs
        .iter()
        .filter(|d| {
            let kind = str_field(d, "kind").unwrap_or_default();
            template_path(&kind, &str_field(d, "apiVersion").unwrap_or_default()).is_some()
                || kind == "List"
        })
        .count();
    if opts.sandbox_id.is_some() && workloads > 1 {
        return Err(InjectError::Options(format!(
            "--sandbox-id names one sandbox, but the input has {workloads} workloads; inject \
             them one at a time"
        )));
    }
    let mut tally = Tally::default();
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        out.extend(inject_document(doc, i + 1, settings, opts, &mut tally)?);
    }
    let yaml = super::to_yaml(&out).map_err(|e| InjectError::Yaml(e.to_string()))?;
    Ok(Injected {
        yaml,
        injected: tally.injected,
        already_injected: tally.already,
        warnings: tally.warnings,
    })
}
