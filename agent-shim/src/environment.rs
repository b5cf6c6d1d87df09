//! The agent's environment: credential scrubbing and trust variables.
//!
//! Owns: building the child's environment from the shim's — removing variables whose
//! names look like credentials (`*_TOKEN`, `*_SECRET`, …, configurable) and pointing
//! every common TLS client at the sandbox CA bundle. Must never: log or return a
//! variable's *value*; only names leave this module.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

/// Name globs removed from the agent's environment unless `--keep-env` names them.
pub const DEFAULT_SCRUB_GLOBS: [&str; 5] = [
    "*_TOKEN",
    "*_SECRET",
    "*_KEY",
    "*_PASSWORD",
    "*_CREDENTIALS",
];

/// Variables pointed at the CA bundle so curl, OpenSSL, Python requests, pip, git,
/// Node.js and the AWS SDKs trust the sidecar's interception CA.
pub const TRUST_VARS: [&str; 7] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "AWS_CA_BUNDLE",
];

/// Shell-style glob match (`*` any run, `?` one character), ASCII case-insensitive.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_uppercase()).collect();
    let n: Vec<char> = name.chars().map(|c| c.to_ascii_uppercase()).collect();
    // Iterative matcher with single-star backtracking.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The environment the agent will get, keyed by name.
pub type Env = BTreeMap<OsString, OsString>;

/// The shim's own environment.
pub fn inherited() -> Env {
    std::env::vars_os().collect()
}

/// Remove every variable whose name matches one of `globs` and is not in `keep`.
/// Returns the removed names (never values), sorted.
pub fn scrub(env: &mut Env, globs: &[String], keep: &[String]) -> Vec<String> {
    let mut removed = Vec::new();
    env.retain(|name, _| {
        let name = name.to_string_lossy();
        let hit = globs.iter().any(|g| glob_match(g, &name)) && !keep.iter().any(|k| *k == name);
        if hit {
            removed.push(name.into_owned());
        }
        !hit
    });
    removed
}

/// Point every trust variable at `bundle`.
pub fn set_trust(env: &mut Env, bundle: &Path) {
    for var in TRUST_VARS {
        env.insert(var.into(), bundle.as_os_str().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*_TOKEN", "GITHUB_TOKEN"));
        assert!(glob_match("*_TOKEN", "github_token"));
        assert!(!glob_match("*_TOKEN", "TOKEN"));
        assert!(!glob_match("*_TOKEN", "GITHUB_TOKENS"));
        assert!(glob_match("*_KEY", "AWS_SECRET_ACCESS_KEY"));
        assert!(glob_match("A?C*", "ABCDEF"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*_*_X", "A_B_C_X"));
        assert!(!glob_match("*_*_X", "A_X"));
        assert!(glob_match("EXACT", "EXACT"));
    }

    #[test]
    fn scrubs_names_only_and_keeps() {
        let mut env: Env = [
            ("GITHUB_TOKEN", "ghp_secret"),
            ("AWS_SECRET_ACCESS_KEY", "abc"),
            ("PATH", "/bin"),
            ("KEEP_TOKEN", "k"),
            ("DB_PASSWORD", "p"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let globs: Vec<String> = DEFAULT_SCRUB_GLOBS.iter().map(|s| s.to_string()).collect();
        let removed = scrub(&mut env, &globs, &["KEEP_TOKEN".into()]);
        assert_eq!(
            removed,
            vec!["AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "GITHUB_TOKEN"]
        );
        assert!(env.contains_key(&OsString::from("PATH")));
        assert!(env.contains_key(&OsString::from("KEEP_TOKEN")));
        set_trust(&mut env, Path::new("/b.pem"));
        assert_eq!(env[&OsString::from("PIP_CERT")], OsString::from("/b.pem"));
    }
}
