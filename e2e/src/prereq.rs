//! Prerequisite checks: root and the external tools a test needs.
//!
//! Outside CI a missing prerequisite prints a reason and the test returns early (skip).
//! Under `CI=true` it panics with what to install, so CI never silently skips.

use std::path::{Path, PathBuf};

/// True when the `CI` environment variable is `true` (or `1`).
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true") | Ok("1")
    )
}

/// The apt package that provides `tool`, for error messages.
pub fn package_for(tool: &str) -> &'static str {
    match tool {
        "ip" | "ss" => "iproute2",
        "iptables"
        | "ip6tables"
        | "iptables-restore"
        | "ip6tables-restore"
        | "iptables-save"
        | "ip6tables-save"
        | "iptables-legacy"
        | "iptables-nft"
        | "iptables-legacy-restore"
        | "iptables-nft-restore"
        | "ip6tables-legacy-restore"
        | "ip6tables-nft-restore" => "iptables",
        "nft" => "nftables",
        "nginx" => "nginx-light",
        "curl" => "curl",
        "dnsmasq" => "dnsmasq-base",
        "setpriv" | "unshare" => "util-linux",
        "tcpdump" => "tcpdump",
        "ping" => "iputils-ping",
        "python3" => "python3",
        "openssl" => "openssl",
        "dig" => "bind9-dnsutils",
        "conntrack" => "conntrack",
        "timeout" => "coreutils",
        _ => "(unknown package)",
    }
}

/// Find an executable in PATH, also looking in the sbin directories (cargo test may run
/// with a PATH that lacks them).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The list of reasons why this test cannot run (empty when it can).
pub fn missing(tools: &[&str]) -> Vec<String> {
    let mut reasons = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        reasons.push("must run as root (network namespaces and firewall rules)".to_string());
    }
    for base in ["ip", "setpriv", "timeout"].iter().chain(tools) {
        if find_tool(base).is_none() {
            reasons.push(format!(
                "`{base}` not found in PATH: apt-get install -y {}",
                package_for(base)
            ));
        }
    }
    if tools.contains(&"python3") && !is_executable(Path::new(crate::PYTHON)) {
        reasons.push(format!(
            "{} not found (the agent UID needs a system python): apt-get install -y python3",
            crate::PYTHON
        ));
    }
    reasons.dedup();
    reasons
}

/// Check root and `tools` (plus `ip`, `setpriv`, `timeout`, always needed).
///
/// Returns `true` when the test can run. When it cannot: under `CI=true` this panics with
/// what to install; otherwise it prints the reason to stderr and returns `false` — the test
/// should `return` (see [`require!`](crate::require)).
pub fn require_root_or_skip(tools: &[&str]) -> bool {
    let reasons = missing(tools);
    if reasons.is_empty() {
        return true;
    }
    let text = reasons.join("; ");
    if in_ci() {
        panic!("e2e prerequisite missing under CI=true (install it): {text}");
    }
    eprintln!("SKIP: e2e prerequisite missing: {text}");
    false
}

/// `require!("nft", "curl");` — return early from the test (skip) unless root and the tools
/// are present; under `CI=true` fail instead.
#[macro_export]
macro_rules! require {
    ($($tool:expr),* $(,)?) => {
        if !$crate::require_root_or_skip(&[$($tool),*]) {
            return;
        }
    };
}
