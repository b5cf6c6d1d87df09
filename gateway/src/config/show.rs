//! `--print-config`: the effective configuration as YAML.
//!
//! Must never: print a secret — the admin token appears as its file's path and
//! its fingerprint only.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::StoreConfig;
use super::{Config, TlsFiles};
use crate::authn::admin_token::AdminToken;
use crate::authn::kube::KubeAuthConfig;
use crate::authn::oidc::OidcConfig;

impl Config {
    /// The effective configuration as YAML, secrets replaced by fingerprints.
    pub fn redacted_yaml(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct Shown<'a> {
            listen: String,
            admin_listen: String,
            data_dir: &'a Path,
            tls: Option<&'a TlsFiles>,
            insecure_plaintext: bool,
            admin_token_file: Option<&'a Path>,
            admin_token: Option<String>,
            insecure_allow_anonymous: bool,
            issuer: &'a str,
            token_ttl: String,
            bootstrap_ttl: String,
            key_rotation_interval: String,
            leeway: String,
            request_timeout: String,
            header_read_timeout: String,
            max_body_bytes: usize,
            max_concurrent_requests: usize,
            rate_limit_per_sec: f64,
            rate_limit_burst: u32,
            store: &'a StoreConfig,
            kubernetes: Option<&'a KubeAuthConfig>,
            oidc: Option<&'a OidcConfig>,
        }
        let secs = |d: Duration| format!("{}s", d.as_secs());
        let admin_token = self
            .admin_token_file
            .as_ref()
            .map(|p| match AdminToken::load(p) {
                Ok(t) => format!("<redacted, {}>", t.fingerprint()),
                Err(e) => format!("<unreadable: {e}>"),
            });
        let shown = Shown {
            listen: self.listen.to_string(),
            admin_listen: self.admin_listen.to_string(),
            data_dir: &self.data_dir,
            tls: self.tls.as_ref(),
            insecure_plaintext: self.tls.is_none(),
            admin_token_file: self.admin_token_file.as_deref(),
            admin_token,
            insecure_allow_anonymous: self.insecure_allow_anonymous,
            issuer: &self.issuer,
            token_ttl: secs(self.token_ttl),
            bootstrap_ttl: secs(self.bootstrap_ttl),
            key_rotation_interval: secs(self.key_rotation_interval),
            leeway: secs(self.leeway),
            request_timeout: secs(self.request_timeout),
            header_read_timeout: secs(self.header_read_timeout),
            max_body_bytes: self.max_body_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            rate_limit_per_sec: self.rate_limit_per_sec,
            rate_limit_burst: self.rate_limit_burst,
            store: &self.store,
            kubernetes: self.kube.as_ref(),
            oidc: self.oidc.as_ref(),
        };
        serde_yaml_ng::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
