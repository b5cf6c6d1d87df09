//! The custom resources of `palisade.dev/v1alpha1`: [`Sandbox`] and
//! [`Policy`], the records a replicated gateway keeps in the API server
//! (see [`crate::store::kube_store`]) and what `kubectl get sandboxes` shows.
//!
//! * A `Policy` object *is* a policy document (`policies/examples/*.yaml`
//!   apply as they are); the gateway validates it and writes `status`
//!   (accepted or rejected with the errors, and the revision it got).
//! * A `Sandbox` object is one registered sandbox, named by its id.
//!   Its bootstrap tokens and every secret value live in Secrets, never here.
//!
//! The CRD YAML is generated from these types and checked in at
//! `helm/crds/`; a test fails when it drifts. Regenerate with
//! `UPDATE_CRDS=1 cargo nextest run -p palisade-gateway --lib crd`, or print it
//! with `palisade crds`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every Palisade resource.
pub const GROUP: &str = "palisade.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";

/// What a sandbox runs and as whom (the gateway API's `SandboxSpec`, plus
/// who created it).
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "Sandbox",
    plural = "sandboxes",
    shortname = "sbx",
    namespaced,
    status = "SandboxStatus",
    printcolumn = r#"{"name":"Display","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".spec.policyRef"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".status.podName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = r#"!has(self.spec.uid) || !has(self.spec.gid) || self.spec.uid != 0"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// The name the creator gave (the object's name is the sandbox id).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub display_name: String,
    /// Name of the `Policy` (this namespace's, or a cluster-wide one) it runs under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub policy_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub service_account: Option<String>,
    /// Agent UID; never 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// The agent's command and arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub command: Vec<String>,
    /// Labels the creator set (also copied to the object's labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Subject of the principal that created it (`user:alice`, `platform:ci`).
    #[schemars(length(min = 1, max = 512))]
    pub owner: String,
    /// Seconds since the Unix epoch, as the creating gateway saw it.
    pub created_at: u64,
}

/// Where a sandbox is in its life, as the driver last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_ready: Option<bool>,
    /// The policy revision the sidecar last reported as applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A Kubernetes-style condition (`type`, `status`, `reason`, `message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The policy document's `spec`, exactly as `policies/` defines it.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "Policy",
    plural = "policies",
    shortname = "ppol",
    namespaced,
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.accepted"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct PolicySpec(pub palisade_policy::model::Spec);

/// What the gateway made of a `Policy` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// `"True"` when the document passed validation and is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<String>,
    /// Validation errors, one per line item, when it was rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The store-wide revision it was served under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// `metadata.generation` the status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Every CRD, as the multi-document YAML `kubectl apply -f` takes.
pub fn crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt as _;
    let mut text = String::new();
    for crd in [Sandbox::crd(), Policy::crd()] {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn checked_in_crds_are_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/crds/palisade.dev.yaml");
        let generated = format!(
            "# Generated from gateway/src/crd.rs; do not edit. Regenerate with\n\
             # UPDATE_CRDS=1 cargo nextest run -p palisade-gateway --lib crd\n{}",
            crds_yaml().unwrap()
        );
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} is out of date with gateway/src/crd.rs; regenerate it with\n    \
             UPDATE_CRDS=1 cargo nextest run -p palisade-gateway --lib crd\nand commit the result",
            path.display()
        );
    }
}
