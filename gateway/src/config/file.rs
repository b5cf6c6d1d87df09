//! The YAML config file (`--config`): every key optional, unknown keys
//! refused, durations as text until [`file_duration`] parses them.
//!
//! Must never: accept a key it does not know (a typo must not silently fall
//! back to a default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::authn::oidc::{GroupRoles, OidcPrincipalKind};
use crate::duration::parse_duration;

/// The YAML config file: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub insecure_plaintext: Option<bool>,
    pub admin_token_file: Option<PathBuf>,
    pub insecure_allow_anonymous: Option<bool>,
    pub issuer: Option<String>,
    pub token_ttl: Option<String>,
    pub bootstrap_ttl: Option<String>,
    pub key_rotation_interval: Option<String>,
    pub leeway: Option<String>,
    pub request_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
    pub rate_limit_per_sec: Option<f64>,
    pub rate_limit_burst: Option<u32>,
    pub store: Option<super::args::StoreKind>,
    pub store_namespace: Option<String>,
    pub lease_duration: Option<String>,
    pub kube_config: Option<PathBuf>,
    pub sandbox_service_account: Option<String>,
    pub sandbox_namespaces: Option<Vec<String>>,
    pub token_audience: Option<String>,
    pub kube_timeout: Option<String>,
    pub exec_max_per_sandbox: Option<usize>,
    pub exec_idle_timeout: Option<String>,
    pub exec_max_duration: Option<String>,
    /// OIDC user/platform tokens (a nested map; see [`OidcFileConfig`]).
    pub oidc: Option<OidcFileConfig>,
}

impl FileConfig {
    /// Read and parse `path`; no path is an empty file.
    pub fn read(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        serde_yaml_ng::from_str::<FileConfig>(&text)
            .with_context(|| format!("config file {} is invalid", path.display()))
    }
}

/// The `oidc:` map of the YAML config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OidcFileConfig {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_ca_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_refresh_interval: Option<String>,
    pub jwks_min_refresh_interval: Option<String>,
    pub fetch_timeout: Option<String>,
    pub principal: Option<OidcPrincipalKind>,
    pub subject_claim: Option<String>,
    pub roles_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub group_roles: Option<GroupRoles>,
    pub namespaces_claim: Option<String>,
}

/// A duration key of the file, parsed; the error names the key.
pub fn file_duration(v: Option<&String>, key: &str) -> anyhow::Result<Option<Duration>> {
    v.map(|s| parse_duration(s).map_err(|e| anyhow::anyhow!("config key `{key}`: {e}")))
        .transpose()
}
