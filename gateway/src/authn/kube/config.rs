//! The settings of Kubernetes ServiceAccount authentication and their
//! defaults; [`crate::config`] fills them from flags and the config file.
//!
//! Must never: hold a credential (the ServiceAccount tokens are presented per
//! request; the kubeconfig is only a path).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::duration::ser_secs;

/// Audience a projected ServiceAccount token must carry for `token:issue`.
pub const DEFAULT_TOKEN_AUDIENCE: &str = palisade_api::GATEWAY_AUDIENCE;
/// Deadline for the Kubernetes API calls of one `token:issue`.
pub const DEFAULT_KUBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Kubernetes ServiceAccount authentication on `token:issue`; present only
/// when `--sandbox-service-account` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KubeAuthConfig {
    /// `None`: in-cluster configuration.
    pub kube_config: Option<PathBuf>,
    pub service_account: String,
    pub namespaces: Vec<String>,
    pub audience: String,
    #[serde(serialize_with = "ser_secs")]
    pub timeout: Duration,
}
