//! Credentials a sandbox's policy sources from gateway secrets
//! (`from: {secret: {name, key}}`), resolved against the store, with the
//! (host, port, path globs) of every egress rule that references them — and
//! the secret's [`Allowance`]: who may use it and where it may be sent.
//!
//! Host patterns are passed through as written (`*.example.com`): the sidecar
//! matches them with the same host matcher as the rule itself, so a binding
//! is exactly as wide as the rule that allows the traffic.
//!
//! The allowance is checked twice: when a policy is written
//! ([`check_policy`], a 422 naming the secret and what is not allowed) and on
//! every delivery ([`resolve`]), so a secret whose allowance shrank after the
//! policy was written is withheld from sidecars that no longer qualify.
//!
//! Must never: log a value (names and fingerprints only), deliver a
//! credential no egress rule of this policy references, or deliver one whose
//! secret does not allow the policy and every host and port it is bound to.

use std::collections::BTreeMap;
use std::fmt;

use palisade_api::session::{CredentialBinding, DeliveredCredential};
use palisade_policy::Policy;
use palisade_policy::host::{HostPattern, parse_pattern};
use palisade_policy::model::{CredentialSource, EgressRule};

use crate::store::{SecretAllowance, SecretRecord, Store, StoreError};

/// Entries per allowance list.
pub const MAX_ALLOWANCE_ENTRIES: usize = 64;

/// A policy an allowance names: `NAME` (cluster-wide) or `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PolicyRef {
    namespace: Option<String>,
    name: String,
}

/// One `HOST[:PORT]` an allowance names (`None` port: any port).
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostAllowance {
    pattern: HostPattern,
    port: Option<u16>,
}

/// A secret's allowance, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowance {
    namespaces: Vec<String>,
    policies: Vec<PolicyRef>,
    hosts: Vec<HostAllowance>,
}

fn label(what: &str, s: &str) -> Result<String, String> {
    if crate::principal::valid_label(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{what} `{s}` is not a DNS label (1-63 lowercase letters, digits and `-`)"
        ))
    }
}

fn parse_policy_ref(s: &str) -> Result<PolicyRef, String> {
    match s.split_once('/') {
        Some((ns, name)) => Ok(PolicyRef {
            namespace: Some(label("allowedPolicies: namespace", ns)?),
            name: label("allowedPolicies: policy name", name)?,
        }),
        None => Ok(PolicyRef {
            namespace: None,
            name: label("allowedPolicies: policy name", s)?,
        }),
    }
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`, or a bare IPv6 literal (any port).
fn parse_host_allowance(s: &str) -> Result<HostAllowance, String> {
    let bad_port = |p: &str| {
        format!(
            "allowedHosts: `{s}` has port `{p}`; ports are 1-65535 (or leave `:PORT` out for any port)"
        )
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("allowedHosts: `{s}` opens `[` without closing it"))?;
        match after {
            "" => (inside, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (inside, Some(p)),
                None => return Err(format!("allowedHosts: `{s}`: expected `:PORT` after `]`")),
            },
        }
    } else if s.matches(':').count() == 1 {
        let (h, p) = s.split_once(':').unwrap_or((s, ""));
        (h, Some(p))
    } else {
        (s, None)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => Some(n),
            _ => return Err(bad_port(p)),
        },
    };
    let pattern = parse_pattern(host).map_err(|e| format!("allowedHosts: `{s}`: {e}"))?;
    Ok(HostAllowance { pattern, port })
}

/// Whether `allowed` covers `bound`: every name the bound pattern matches is
/// matched by the allowed one (a `*.` wildcard matches exactly one more
/// label, as in policies).
fn covers(allowed: &HostPattern, bound: &HostPattern) -> bool {
    match (allowed, bound) {
        (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
        (HostPattern::Ip(a), HostPattern::Ip(b)) => a == b,
        (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => a == b,
        (HostPattern::Wildcard(parent), HostPattern::Exact(name)) => name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
        _ => false,
    }
}

impl Allowance {
    /// Parse and validate what the admin wrote; the error names the entry.
    pub fn parse(raw: &SecretAllowance) -> Result<Self, String> {
        for (field, list) in [
            ("allowedNamespaces", &raw.namespaces),
            ("allowedPolicies", &raw.policies),
            ("allowedHosts", &raw.hosts),
        ] {
            if list.len() > MAX_ALLOWANCE_ENTRIES {
                return Err(format!(
                    "{field} has {} entries; at most {MAX_ALLOWANCE_ENTRIES}",
                    list.len()
                ));
            }
        }
        Ok(Self {
            namespaces: raw
                .namespaces
                .iter()
                .map(|n| label("allowedNamespaces", n))
                .collect::<Result<_, _>>()?,
            policies: raw
                .policies
                .iter()
                .map(|p| parse_policy_ref(p))
                .collect::<Result<_, _>>()?,
            hosts: raw
                .hosts
                .iter()
                .map(|h| parse_host_allowance(h))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether policy `name` of `namespace` (`None`: cluster-wide) may use the secret.
    pub fn allows_policy(&self, name: &str, namespace: Option<&str>) -> bool {
        namespace.is_some_and(|ns| self.namespaces.iter().any(|n| n == ns))
            || self
                .policies
                .iter()
                .any(|p| p.name == name && p.namespace.as_deref() == namespace)
    }

    /// Whether a binding of `host` (a policy host pattern) and `port` is
    /// within the allowed hosts. A host that is not a valid pattern is not.
    pub fn allows_binding(&self, host: &str, port: u16) -> bool {
        let Ok(bound) = parse_pattern(host) else {
            return false;
        };
        self.hosts
            .iter()
            .any(|a| a.port.is_none_or(|p| p == port) && covers(&a.pattern, &bound))
    }
}

/// Why a secret may not serve a credential of a policy. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The secret, or its key, does not exist.
    Missing { secret: String, key: String },
    /// The policy is neither in an allowed namespace nor an allowed policy.
    PolicyNotAllowed {
        secret: String,
        policy: String,
        namespace: Option<String>,
    },
    /// A host and port the credential is bound to is outside the allowed hosts.
    HostNotAllowed {
        secret: String,
        host: String,
        port: u16,
    },
    /// The stored allowance does not parse (never after a validated write).
    BadAllowance { secret: String, reason: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing { secret, key } => write!(
                f,
                "secret `{secret}` does not exist or has no key `{key}`; an admin creates it \
                 with `palisade secret set {secret} --from-file {key}=PATH …` and its allowance"
            ),
            Refusal::PolicyNotAllowed {
                secret,
                policy,
                namespace: Some(ns),
            } => write!(
                f,
                "secret `{secret}` may not be used by policy `{policy}` of namespace `{ns}`: \
                 neither namespace `{ns}` is in its allowedNamespaces nor `{ns}/{policy}` in its \
                 allowedPolicies (an admin allows it with `palisade secret set {secret} … \
                 --allow-namespace {ns}` or `--allow-policy {ns}/{policy}`)"
            ),
            Refusal::PolicyNotAllowed {
                secret,
                policy,
                namespace: None,
            } => write!(
                f,
                "secret `{secret}` may not be used by the cluster-wide policy `{policy}`: \
                 `{policy}` is not in its allowedPolicies (an admin allows it with \
                 `palisade secret set {secret} … --allow-policy {policy}`)"
            ),
            Refusal::HostNotAllowed { secret, host, port } => write!(
                f,
                "secret `{secret}` may not be sent to `{host}` port {port}: no entry of its \
                 allowedHosts covers it (an admin allows it with `palisade secret set {secret} … \
                 --allow-host {host}:{port}`)"
            ),
            Refusal::BadAllowance { secret, reason } => write!(
                f,
                "secret `{secret}` has an unusable allowance ({reason}); an admin must set it again"
            ),
        }
    }
}

/// Everything that stops `record` (the secret `secret` as stored, or `None`)
/// from serving key `key` to policy `policy` of `namespace` over `bindings`;
/// empty when it may.
pub fn refusals(
    secret: &str,
    key: &str,
    record: Option<&SecretRecord>,
    policy: &str,
    namespace: Option<&str>,
    bindings: &[CredentialBinding],
) -> Vec<Refusal> {
    let Some(record) = record.filter(|r| r.data.contains_key(key)) else {
        return vec![Refusal::Missing {
            secret: secret.to_owned(),
            key: key.to_owned(),
        }];
    };
    let allowance = match Allowance::parse(&record.allowance) {
        Ok(a) => a,
        Err(reason) => {
            return vec![Refusal::BadAllowance {
                secret: secret.to_owned(),
                reason,
            }];
        }
    };
    let mut out = Vec::new();
    if !allowance.allows_policy(policy, namespace) {
        out.push(Refusal::PolicyNotAllowed {
            secret: secret.to_owned(),
            policy: policy.to_owned(),
            namespace: namespace.map(str::to_owned),
        });
    }
    for b in bindings {
        if !allowance.allows_binding(&b.host, b.port) {
            let refusal = Refusal::HostNotAllowed {
                secret: secret.to_owned(),
                host: b.host.clone(),
                port: b.port,
            };
            if !out.contains(&refusal) {
                out.push(refusal);
            }
        }
    }
    out
}

/// A credential the policy sources from a secret the store does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub credential: String,
    pub secret: String,
    pub key: String,
}

/// A credential whose secret exists but does not allow this policy or one of
/// its bindings: not delivered. `fingerprint` identifies the value withheld.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    pub credential: String,
    pub secret: String,
    pub key: String,
    pub fingerprint: String,
    pub reasons: Vec<Refusal>,
}

/// The delivered set (sorted by credential name), what could not be
/// resolved, and what was withheld by the secrets' allowances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    pub credentials: Vec<DeliveredCredential>,
    pub missing: Vec<Missing>,
    pub withheld: Vec<Withheld>,
}

/// Path globs of a rule: empty (= any path) when no `http` rules, an
/// `access` preset, or any allow rule without a path.
fn rule_paths(rule: &EgressRule) -> Vec<String> {
    let Some(http) = &rule.http else {
        return Vec::new();
    };
    if http.allow.is_empty() || http.allow.iter().any(|r| r.path.is_none()) {
        return Vec::new();
    }
    let mut paths: Vec<String> = http.allow.iter().filter_map(|r| r.path.clone()).collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Every (host, port, paths) of the rules that reference `credential`.
pub fn bindings(policy: &Policy, credential: &str) -> Vec<CredentialBinding> {
    let mut out = Vec::new();
    for rule in &policy.spec.egress {
        if rule.credential.as_deref() != Some(credential) {
            continue;
        }
        let paths = rule_paths(rule);
        for host in &rule.hosts {
            for port in &rule.ports {
                let Ok(port) = u16::try_from(*port) else {
                    continue;
                };
                let binding = CredentialBinding {
                    host: host.clone(),
                    port,
                    paths: paths.clone(),
                };
                if !out.contains(&binding) {
                    out.push(binding);
                }
            }
        }
    }
    out
}

/// Credential sources a policy stored on the gateway may not use: `file` and
/// `env` read the sidecar's own files and environment, which only a policy
/// the sidecar loads locally (`--policy`) may name. (field path, message)
pub fn local_only_sources(policy: &Policy) -> Vec<(String, String)> {
    policy
        .spec
        .credentials
        .iter()
        .filter_map(|(name, c)| {
            let kind = match &c.from {
                CredentialSource::File(_) => "file",
                CredentialSource::Env(_) => "env",
                _ => return None,
            };
            Some((
                format!("spec.credentials.{name}.from.{kind}"),
                format!(
                    "a `{kind}` credential source reads the sidecar's own {}; it is allowed only \
                     in a policy the sidecar loads locally (--policy FILE), never in one stored \
                     on the gateway: store the value as a gateway secret and use \
                     `from: {{secret: {{name, key}}}}`",
                    if kind == "file" {
                        "files"
                    } else {
                        "environment"
                    }
                ),
            ))
        })
        .collect()
}

/// The policy-write check: every secret-sourced credential of `policy`
/// (named `name`, of `namespace`) must name a secret that exists and allows
/// the policy and every binding. (field path, refusal) for each problem.
pub fn check_policy(
    policy: &Policy,
    namespace: Option<&str>,
    store: &dyn Store,
) -> Result<Vec<(String, Refusal)>, StoreError> {
    let mut secrets: BTreeMap<String, Option<SecretRecord>> = BTreeMap::new();
    let mut out = Vec::new();
    for (name, credential) in &policy.spec.credentials {
        let CredentialSource::Secret { name: secret, key } = &credential.from else {
            continue;
        };
        if !secrets.contains_key(secret) {
            secrets.insert(secret.clone(), store.get_secret(secret)?);
        }
        let record = secrets.get(secret).and_then(Option::as_ref);
        let bindings = bindings(policy, name);
        for r in refusals(
            secret,
            key,
            record,
            &policy.metadata.name,
            namespace,
            &bindings,
        ) {
            out.push((format!("spec.credentials.{name}.from.secret"), r));
        }
    }
    Ok(out)
}

/// Resolve every secret-sourced credential of `policy` (of `namespace`)
/// against the store, withholding what the secrets' allowances do not allow.
pub fn resolve(
    policy: &Policy,
    namespace: Option<&str>,
    store: &dyn Store,
) -> Result<Resolved, StoreError> {
    let mut secrets: BTreeMap<String, Option<SecretRecord>> = BTreeMap::new();
    let mut resolved = Resolved::default();
    for (name, credential) in &policy.spec.credentials {
        let CredentialSource::Secret { name: secret, key } = &credential.from else {
            continue;
        };
        let bindings = bindings(policy, name);
        if bindings.is_empty() {
            // Not referenced by any rule: nowhere it may be injected.
            continue;
        }
        if !secrets.contains_key(secret) {
            secrets.insert(secret.clone(), store.get_secret(secret)?);
        }
        let record = secrets.get(secret).and_then(Option::as_ref);
        let Some(value) = record.and_then(|r| r.data.get(key)) else {
            resolved.missing.push(Missing {
                credential: name.clone(),
                secret: secret.clone(),
                key: key.clone(),
            });
            continue;
        };
        let reasons = refusals(
            secret,
            key,
            record,
            &policy.metadata.name,
            namespace,
            &bindings,
        );
        if reasons.is_empty() {
            resolved.credentials.push(DeliveredCredential {
                name: name.clone(),
                value: value.clone(),
                bindings,
            });
        } else {
            resolved.withheld.push(Withheld {
                credential: name.clone(),
                secret: secret.clone(),
                key: key.clone(),
                fingerprint: crate::store::fingerprint(value),
                reasons,
            });
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::RedbStore;

    const POLICY: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata:
  name: web
spec:
  credentials:
    gh:
      from: {secret: {name: github, key: token}}
    absent:
      from: {secret: {name: nope, key: token}}
    envcred:
      from: {env: SOME_VAR}
  egress:
    - name: gh-api
      hosts: [api.github.com, "*.githubusercontent.com"]
      ports: [443]
      credential: gh
      http:
        allow:
          - {methods: [GET], path: "/repos/**"}
          - {methods: [POST], path: "/graphql"}
    - name: gh-any
      hosts: [uploads.github.com]
      ports: [443, 8443]
      credential: gh
    - name: other
      hosts: [example.com]
      ports: [443]
      credential: absent
    - name: env
      hosts: [env.example.com]
      ports: [443]
      credential: envcred
"#;

    fn allowance(namespaces: &[&str], policies: &[&str], hosts: &[&str]) -> SecretAllowance {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        SecretAllowance {
            namespaces: v(namespaces),
            policies: v(policies),
            hosts: v(hosts),
        }
    }

    /// Allows what POLICY binds `gh` to, for the cluster-wide policy `web`.
    fn github_allowance() -> SecretAllowance {
        allowance(
            &[],
            &["web"],
            &[
                "api.github.com:443",
                "*.githubusercontent.com:443",
                "uploads.github.com",
            ],
        )
    }

    #[test]
    fn resolves_values_and_bindings_and_reports_missing() {
        let policy = palisade_policy::parse_policy(POLICY.as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let data = BTreeMap::from([("token".to_owned(), "ghp_value".to_owned())]);
        store
            .put_secret("github", &data, &github_allowance(), 1)
            .unwrap();
        let r = resolve(&policy, None, &store).unwrap();
        assert!(r.withheld.is_empty(), "{:?}", r.withheld);
        assert_eq!(r.credentials.len(), 1, "only referenced secret credentials");
        let gh = &r.credentials[0];
        assert_eq!(gh.name, "gh");
        assert_eq!(gh.value, "ghp_value");
        let paths = vec!["/graphql".to_owned(), "/repos/**".to_owned()];
        assert_eq!(
            gh.bindings,
            vec![
                CredentialBinding {
                    host: "api.github.com".into(),
                    port: 443,
                    paths: paths.clone()
                },
                CredentialBinding {
                    host: "*.githubusercontent.com".into(),
                    port: 443,
                    paths
                },
                CredentialBinding {
                    host: "uploads.github.com".into(),
                    port: 443,
                    paths: vec![]
                },
                CredentialBinding {
                    host: "uploads.github.com".into(),
                    port: 8443,
                    paths: vec![]
                },
            ]
        );
        assert_eq!(
            r.missing,
            vec![Missing {
                credential: "absent".into(),
                secret: "nope".into(),
                key: "token".into()
            }]
        );
    }

    #[test]
    fn host_allowances_parse_and_cover_like_policy_hosts() {
        let a = Allowance::parse(&allowance(
            &[],
            &[],
            &[
                "api.github.com:443",
                "*.example.com",
                "[2001:db8::7]:8443",
                "2001:db8::9",
                "198.18.0.7:80",
                "API.Upper.COM.:443",
            ],
        ))
        .unwrap();
        assert!(a.allows_binding("api.github.com", 443));
        assert!(!a.allows_binding("api.github.com", 8443), "port");
        assert!(!a.allows_binding("github.com", 443));
        assert!(!a.allows_binding("*.github.com", 443), "wider than allowed");
        assert!(a.allows_binding("x.example.com", 1));
        assert!(a.allows_binding("*.example.com", 443), "the same wildcard");
        assert!(
            !a.allows_binding("a.b.example.com", 443),
            "`*.` is one label"
        );
        assert!(!a.allows_binding("*.b.example.com", 443));
        assert!(!a.allows_binding("example.com", 443));
        assert!(a.allows_binding("[2001:db8::7]", 8443));
        assert!(!a.allows_binding("2001:db8::7", 443));
        assert!(a.allows_binding("2001:db8::9", 22));
        assert!(a.allows_binding("198.18.0.7", 80));
        assert!(a.allows_binding("api.upper.com", 443), "normalised");
        assert!(!a.allows_binding("not a host", 443));
        for (bad, needle) in [
            ("api.github.com:0", "1-65535"),
            ("api.github.com:x", "1-65535"),
            ("[2001:db8::1", "without closing"),
            ("[2001:db8::1]443", "expected `:PORT`"),
            ("*", "every name"),
            ("*.com:443", "top-level"),
            ("127.0.0.1:443", "never dialled"),
        ] {
            let err = Allowance::parse(&allowance(&[], &[], &[bad])).unwrap_err();
            assert!(
                err.contains(needle) && err.contains("allowedHosts"),
                "{bad}: {err}"
            );
        }
        let err = Allowance::parse(&allowance(&["Bad_NS"], &[], &[])).unwrap_err();
        assert!(
            err.contains("allowedNamespaces") && err.contains("Bad_NS"),
            "{err}"
        );
        let err = Allowance::parse(&allowance(&[], &["a/b/c"], &[])).unwrap_err();
        assert!(err.contains("allowedPolicies"), "{err}");
        let many: Vec<String> = (0..65).map(|i| format!("ns-{i}")).collect();
        let raw = SecretAllowance {
            namespaces: many,
            ..SecretAllowance::default()
        };
        assert!(Allowance::parse(&raw).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn policies_qualify_by_namespace_or_by_qualified_name() {
        let a = Allowance::parse(&allowance(&["ns-a"], &["ci", "ns-b/web"], &[])).unwrap();
        assert!(a.allows_policy("anything", Some("ns-a")));
        assert!(a.allows_policy("ci", None), "the cluster-wide `ci`");
        assert!(
            !a.allows_policy("ci", Some("ns-c")),
            "a namespaced `ci` is not it"
        );
        assert!(a.allows_policy("web", Some("ns-b")));
        assert!(!a.allows_policy("web", None));
        assert!(!a.allows_policy("web", Some("ns-c")));
        assert!(!a.allows_policy("other", Some("ns-b")));
        let none = Allowance::parse(&SecretAllowance::default()).unwrap();
        assert!(!none.allows_policy("web", None) && !none.allows_policy("web", Some("ns-a")));
        assert!(!none.allows_binding("api.github.com", 443));
    }

    #[test]
    fn an_allowance_that_does_not_cover_the_policy_withholds_the_credential() {
        let policy = palisade_policy::parse_policy(POLICY.as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let data = BTreeMap::from([("token".to_owned(), "ghp_value".to_owned())]);
        // No allowance at all (the default): usable by nobody.
        store
            .put_secret("github", &data, &SecretAllowance::default(), 1)
            .unwrap();
        let r = resolve(&policy, None, &store).unwrap();
        assert!(r.credentials.is_empty());
        assert_eq!(r.withheld.len(), 1);
        let w = &r.withheld[0];
        assert_eq!((w.credential.as_str(), w.secret.as_str()), ("gh", "github"));
        assert_eq!(w.fingerprint, crate::store::fingerprint("ghp_value"));
        assert!(matches!(w.reasons[0], Refusal::PolicyNotAllowed { .. }));
        assert_eq!(
            w.reasons.len(),
            5,
            "the policy and each of 4 bindings: {:?}",
            w.reasons
        );
        // The policy is allowed, one host is not.
        let mut narrow = github_allowance();
        narrow.hosts.retain(|h| h != "uploads.github.com");
        narrow.hosts.push("uploads.github.com:443".into());
        store.put_secret("github", &data, &narrow, 2).unwrap();
        let r = resolve(&policy, None, &store).unwrap();
        assert!(r.credentials.is_empty());
        assert_eq!(
            r.withheld[0].reasons,
            vec![Refusal::HostNotAllowed {
                secret: "github".into(),
                host: "uploads.github.com".into(),
                port: 8443
            }]
        );
        // The same document as a policy of another namespace: not allowed.
        store
            .put_secret("github", &data, &github_allowance(), 3)
            .unwrap();
        let r = resolve(&policy, Some("ns-a"), &store).unwrap();
        assert!(r.credentials.is_empty());
        let msg = r.withheld[0].reasons[0].to_string();
        assert!(msg.contains("`github`") && msg.contains("ns-a"), "{msg}");
        assert!(!msg.contains("ghp_value"));
        // The write-time check reports the same, per field, and the missing secret.
        let problems = check_policy(&policy, Some("ns-a"), &store).unwrap();
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.credentials.absent.from.secret",
                "spec.credentials.gh.from.secret"
            ]
        );
        assert!(matches!(problems[0].1, Refusal::Missing { .. }));
        assert!(
            check_policy(&policy, None, &store).unwrap().len() == 1,
            "only `absent`"
        );
    }

    #[test]
    fn file_and_env_sources_are_local_only() {
        let policy = palisade_policy::parse_policy(POLICY.as_bytes()).unwrap();
        let found = local_only_sources(&policy);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "spec.credentials.envcred.from.env");
        assert!(found[0].1.contains("--policy"), "{}", found[0].1);
    }
}
