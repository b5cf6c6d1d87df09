//! [`LocalDriverConfig`]: everything the local driver needs, resolved by
//! `palisade up`, with its defaults.
//!
//! Must never: default to changing the host firewall (`egress_nat` is off
//! unless asked for).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::driver::plan::PolicySource;

/// Private range the sandboxes' addresses come from (not the tests' 198.18.0.0/15).
pub const DEFAULT_SUBNET: &str = "10.231.0.0/16";
/// Bridge the sandboxes' veths hang off.
pub const DEFAULT_BRIDGE: &str = "palisade0";
/// Per-sandbox runtime dirs (token file, shared dir, HOME, logs) as root: a tmpfs.
pub const DEFAULT_RUN_DIR: &str = "/run/palisade";
/// Each sandbox log file is rotated at this size (one old file is kept).
pub const DEFAULT_MAX_LOG_BYTES: u64 = 1024 * 1024;

/// How sandboxes are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalMode {
    /// Root: network namespace, sidecar and agent UIDs, capture + fence.
    Isolated,
    /// Not root: no namespace, the agent uses the explicit proxy. Not a security boundary.
    Development,
}

/// Everything the local driver needs, resolved by `palisade up`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalDriverConfig {
    pub mode: LocalMode,
    /// `<data-dir>/driver`: the ledger.
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub subnet: Ipv4Net,
    pub bridge: String,
    /// Masquerade sandbox traffic to the host's uplink (changes the host firewall).
    pub egress_nat: bool,
    /// Nameservers for the sidecars (empty: the host's non-loopback ones).
    pub dns: Vec<IpAddr>,
    pub sidecar_bin: PathBuf,
    pub shim_bin: PathBuf,
    pub policy_source: PolicySource,
    /// Extra CA (PEM) the sidecars trust for upstream servers.
    pub upstream_ca: Option<PathBuf>,
    /// Copy log lines to our stderr.
    pub echo_logs: bool,
    pub max_log_bytes: u64,
}

impl LocalDriverConfig {
    /// Defaults for a data dir; `palisade up` overrides from its flags.
    pub fn new(mode: LocalMode, data_dir: &Path) -> anyhow::Result<Self> {
        let run_dir = match mode {
            LocalMode::Isolated => PathBuf::from(DEFAULT_RUN_DIR),
            LocalMode::Development => data_dir.join("run"),
        };
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let bin = |name: &str| -> PathBuf {
            exe_dir
                .as_ref()
                .map(|d| d.join(name))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from(name))
        };
        Ok(LocalDriverConfig {
            mode,
            state_dir: data_dir.join("driver"),
            run_dir,
            subnet: DEFAULT_SUBNET.parse()?,
            bridge: DEFAULT_BRIDGE.to_owned(),
            egress_nat: false,
            dns: Vec::new(),
            sidecar_bin: bin("palisade-sidecar"),
            shim_bin: bin("palisade-shim"),
            policy_source: PolicySource::Gateway,
            upstream_ca: None,
            echo_logs: false,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
        })
    }
}
