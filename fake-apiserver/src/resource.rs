//! The resources this server serves: the built-in ones the gateway uses and the custom
//! resources registered from CRD YAML at start. Owns names, scope, verbs, subresources
//! and schemas; never touches objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::schema::Schema;

/// What a resource allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verbs {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    All,
    /// create only (TokenReview).
    CreateOnly,
    /// get, list, watch (CustomResourceDefinitions, registered at start only).
    ReadOnly,
}

/// Checks a built-in object by decoding it as its k8s-openapi type.
pub(crate) type TypedCheck = fn(&Value) -> Result<(), String>;

/// One served resource (one group/version/plural).
#[derive(Debug)]
pub(crate) struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub verbs: Verbs,
    /// Custom resources: the version's `openAPIV3Schema`.
    pub schema: Option<Arc<Schema>>,
    /// Built-ins: decoded as their k8s-openapi type on every write.
    pub typed: Option<TypedCheck>,
    /// Keeps `metadata.generation` (CRs, Pods).
    pub has_generation: bool,
    /// DELETE answers the object rather than a Success Status (Pods, Namespaces).
    pub return_deleted_object: bool,
    /// Field selectors beyond `metadata.name` / `metadata.namespace`.
    pub extra_fields: &'static [&'static str],
}

impl ResourceDef {
    /// `pods`, or `widgets.test.palisade.dev`: the name in messages and in counters.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Pod`, or `Widget.test.palisade.dev`: the name in 422 messages.
    pub(crate) fn group_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage identity: every version of one group/plural shares its objects.
    pub(crate) fn storage_id(&self) -> String {
        self.qualified()
    }
}

fn typed<K: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
    serde_json::from_value::<K>(v.clone())
        .map(drop)
        .map_err(|e| e.to_string())
}

fn builtin(
    group: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    typed: TypedCheck,
) -> ResourceDef {
    ResourceDef {
        group: group.to_owned(),
        version: "v1".to_owned(),
        plural: plural.to_owned(),
        kind: kind.to_owned(),
        namespaced,
        status_subresource: false,
        verbs: Verbs::All,
        schema: None,
        typed: Some(typed),
        has_generation: false,
        return_deleted_object: false,
        extra_fields: &[],
    }
}

/// Every served resource, looked up by path (group, version, plural).
#[derive(Debug)]
pub(crate) struct Registry {
    defs: BTreeMap<(String, String, String), Arc<ResourceDef>>,
}

impl Registry {
    /// The built-ins, plus the custom resources of `crds` (each a parsed
    /// `CustomResourceDefinition` document). Panics on a CRD this double cannot serve.
    pub(crate) fn new(crds: &[Value]) -> Registry {
        use k8s_openapi::api::{authentication, coordination, core};
        let mut defs = vec![
            ResourceDef {
                status_subresource: true,
                return_deleted_object: true,
                ..builtin(
                    "",
                    "namespaces",
                    "Namespace",
                    false,
                    typed::<core::v1::Namespace>,
                )
            },
            ResourceDef {
                status_subresource: true,
                has_generation: true,
                return_deleted_object: true,
                extra_fields: &[
                    "spec.nodeName",
                    "spec.serviceAccountName",
                    "status.phase",
                    "status.podIP",
                ],
                ..builtin("", "pods", "Pod", true, typed::<core::v1::Pod>)
            },
            ResourceDef {
                extra_fields: &["type"],
                ..builtin("", "secrets", "Secret", true, typed::<core::v1::Secret>)
            },
            builtin(
                "",
                "configmaps",
                "ConfigMap",
                true,
                typed::<core::v1::ConfigMap>,
            ),
            builtin(
                "",
                "serviceaccounts",
                "ServiceAccount",
                true,
                typed::<core::v1::ServiceAccount>,
            ),
            ResourceDef {
                extra_fields: &[
                    "involvedObject.kind",
                    "involvedObject.name",
                    "involvedObject.namespace",
                    "involvedObject.uid",
                    "reason",
                    "type",
                ],
                ..builtin("", "events", "Event", true, typed::<core::v1::Event>)
            },
            builtin(
                "coordination.k8s.io",
                "leases",
                "Lease",
                true,
                typed::<coordination::v1::Lease>,
            ),
            ResourceDef {
                verbs: Verbs::CreateOnly,
                ..builtin(
                    "authentication.k8s.io",
                    "tokenreviews",
                    "TokenReview",
                    false,
                    typed::<authentication::v1::TokenReview>,
                )
            },
            ResourceDef {
                verbs: Verbs::ReadOnly,
                typed: None,
                ..builtin(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    "CustomResourceDefinition",
                    false,
                    typed::<Value>,
                )
            },
        ];
        for crd in crds {
            defs.extend(crd_resources(crd));
        }
        Registry {
            defs: defs
                .into_iter()
                .map(|d| {
                    (
                        (d.group.clone(), d.version.clone(), d.plural.clone()),
                        Arc::new(d),
                    )
                })
                .collect(),
        }
    }

    pub(crate) fn lookup(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceDef>> {
        self.defs
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .cloned()
    }

    /// By qualified name (`pods`, `widgets.test.palisade.dev`): the first served version.
    pub(crate) fn by_name(&self, qualified: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .values()
            .find(|d| d.qualified() == qualified)
            .cloned()
    }

    /// By an object's `apiVersion` and `kind`.
    pub(crate) fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .values()
            .find(|d| d.api_version() == api_version && d.kind == kind)
            .cloned()
    }
}

/// The served versions of one CRD. Panics with what is wrong: a CRD is test input.
fn crd_resources(crd: &Value) -> Vec<ResourceDef> {
    let name = crd["metadata"]["name"].as_str().unwrap_or("<unnamed>");
    assert_eq!(
        crd["kind"], "CustomResourceDefinition",
        "fake-apiserver: {name}: only CustomResourceDefinition documents can be registered"
    );
    assert_eq!(
        crd["apiVersion"], "apiextensions.k8s.io/v1",
        "fake-apiserver: {name}: only apiextensions.k8s.io/v1 CRDs are supported"
    );
    let spec = &crd["spec"];
    let text = |v: &Value, what: &str| -> String {
        match v.as_str() {
            Some(s) => s.to_owned(),
            None => panic!("fake-apiserver: CRD {name}: {what} is missing"),
        }
    };
    let group = text(&spec["group"], "spec.group");
    let plural = text(&spec["names"]["plural"], "spec.names.plural");
    let kind = text(&spec["names"]["kind"], "spec.names.kind");
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            panic!("fake-apiserver: CRD {name}: spec.scope {other:?} is not Namespaced or Cluster")
        }
    };
    let Some(versions) = spec["versions"].as_array() else {
        panic!("fake-apiserver: CRD {name}: spec.versions is missing");
    };
    versions
        .iter()
        .filter(|v| v["served"] != false)
        .map(|v| {
            let version = text(&v["name"], "spec.versions[].name");
            let schema = &v["schema"]["openAPIV3Schema"];
            assert!(
                schema.is_object(),
                "fake-apiserver: CRD {name} {version}: schema.openAPIV3Schema is required in apiextensions.k8s.io/v1"
            );
            let schema = Schema::compile(schema)
                .unwrap_or_else(|e| panic!("fake-apiserver: CRD {name} {version}: {e}"));
            ResourceDef {
                group: group.clone(),
                version,
                plural: plural.clone(),
                kind: kind.clone(),
                namespaced,
                status_subresource: v["subresources"]["status"].is_object(),
                verbs: Verbs::All,
                schema: Some(Arc::new(schema)),
                typed: None,
                has_generation: true,
                return_deleted_object: false,
                extra_fields: &[],
            }
        })
        .collect()
}
