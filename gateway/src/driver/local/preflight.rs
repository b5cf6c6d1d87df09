//! What the isolated mode needs before it touches anything: root, and the
//! tools it runs (iproute2, util-linux, iptables for `--egress-nat`, the
//! sidecar and shim binaries).
//!
//! Must never: pass when a tool is missing (a half-started sandbox is worse
//! than a clear refusal naming the package to install).

use std::path::{Path, PathBuf};

use super::config::LocalDriverConfig;
use super::process::PATH_ENV;
use crate::driver::contract::DriverError;

/// Root, and the tools the isolated mode runs.
pub(super) fn preflight(c: &LocalDriverConfig) -> Result<(), DriverError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DriverError::failed(
            "the isolated local driver needs root (namespaces, veths, UID changes); run as root \
             or use development mode",
        ));
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("bridge", "iproute2"),
        ("setpriv", "util-linux"),
        ("unshare", "util-linux"),
    ] {
        if which(tool).is_none() {
            return Err(DriverError::failed(format!(
                "`{tool}` not found in PATH; install {pkg}"
            )));
        }
    }
    if c.egress_nat && which("iptables").is_none() {
        return Err(DriverError::failed(
            "--egress-nat needs `iptables` in PATH; install iptables",
        ));
    }
    for bin in [&c.sidecar_bin, &c.shim_bin] {
        if !bin.is_file() && which(&bin.to_string_lossy()).is_none() {
            return Err(DriverError::failed(format!(
                "{} not found; build it (`cargo build -p palisade-sidecar -p palisade-shim`) or \
                 pass --sidecar-bin/--shim-bin",
                bin.display()
            )));
        }
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")
        .unwrap_or_else(|| PATH_ENV.into())
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
