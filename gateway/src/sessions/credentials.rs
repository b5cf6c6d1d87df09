//! Credentials a sandbox's policy sources from gateway secrets
//! (`from: {secret: {name, key}}`), resolved against the store, with the
//! (host, port, path globs) of every egress rule that references them.
//!
//! Host patterns are passed through as written (`*.example.com`): the sidecar
//! matches them with the same host matcher as the rule itself, so a binding
//! is exactly as wide as the rule that allows the traffic.
//!
//! Must never: log a value (names only), or deliver a credential no egress
//! rule of this policy references.

use std::collections::BTreeMap;

use palisade_api::session::{CredentialBinding, DeliveredCredential};
use palisade_policy::Policy;
use palisade_policy::model::{CredentialSource, EgressRule};

use crate::store::{SecretRecord, Store, StoreError};

/// A credential the policy sources from a secret the store does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub credential: String,
    pub secret: String,
    pub key: String,
}

/// The delivered set (sorted by credential name) and what could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    pub credentials: Vec<DeliveredCredential>,
    pub missing: Vec<Missing>,
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

/// Resolve every secret-sourced credential of `policy` against the store.
pub fn resolve(policy: &Policy, store: &dyn Store) -> Result<Resolved, StoreError> {
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
        let value = secrets
            .get(secret)
            .and_then(Option::as_ref)
            .and_then(|record| record.data.get(key));
        match value {
            Some(value) => resolved.credentials.push(DeliveredCredential {
                name: name.clone(),
                value: value.clone(),
                bindings,
            }),
            None => resolved.missing.push(Missing {
                credential: name.clone(),
                secret: secret.clone(),
                key: key.clone(),
            }),
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

    #[test]
    fn resolves_values_and_bindings_and_reports_missing() {
        let policy = palisade_policy::parse_policy(POLICY.as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let data = BTreeMap::from([("token".to_owned(), "ghp_value".to_owned())]);
        store.put_secret("github", &data, 1).unwrap();
        let r = resolve(&policy, &store).unwrap();
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
}
