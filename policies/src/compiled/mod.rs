//! The compiled matcher: built once per policy generation, shared read-only by
//! every connection. Matching is O(1) hash lookups per connection (exact hosts
//! keyed by name, wildcards keyed by parent domain) plus a scan of the few
//! rules naming that host, and does not allocate for ASCII hosts.
//!
//! CONTRACT (used by net-sidecar and the CLI; keep these signatures):
//!
//! ```ignore
//! let policy: CompiledPolicy = CompiledPolicy::compile(&parsed_and_validated_policy);
//! policy.name() -> &str
//! policy.mode() -> Mode; policy.dns_mode() -> DnsMode
//! policy.match_connection(host, port) -> (Decision, Option<RuleId>)
//! policy.name_allowed(host) -> bool                // DNS: some rule names the host (any port)
//! policy.rule(id) -> &CompiledRule                 // name(), tls_mode(), needs_l7(), opaque_tcp(), credential(), allows_address(ip)
//! policy.match_request(id, method, path, query) -> Decision   // path already normalised by the caller
//! judged_path(raw) -> Result<String, PathProblem>  // how the caller normalises (or refuses) a path
//! policy.match_request_methods(id, method, overrides, path, query) -> Decision  // deny wins over every method
//! policy.inspected_hosts() -> impl Iterator<Item=&str>      // names for the CA's name constraints
//! ```
//!
//! Matching semantics (see docs/policy.md):
//! * hosts compare case-insensitively, ignoring one trailing dot, Unicode
//!   names in their IDNA (punycode) form;
//! * `*.example.com` matches exactly one extra leading label: `a.example.com`,
//!   not `example.com`, not `a.b.example.com`;
//! * a rule matches when host and port match; an exact host beats a wildcard;
//!   validation guarantees no two rules claim the same host pattern and port;
//! * the policy `mode` (audit/enforce) is applied by the caller: decisions here
//!   are always what enforcement would do.

mod glob;
mod http;
mod path;
mod rule;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

pub use self::glob::PathGlob;
use self::http::HttpOutcome;
pub use self::http::{READ_ONLY_METHODS, READ_WRITE_METHODS, access_label, query_pairs};
pub use self::path::{PathProblem, has_path_parameters, judged_path, normalize_path};
pub use self::rule::{CompiledRule, effective_tls};
use crate::decision::{Decision, DenyReason};
use crate::host::{self, HostPattern};
use crate::model::{Credential, DnsMode, EgressRule, Mode, Policy, TlsMode};

/// Index of an egress rule inside one [`CompiledPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(pub u32);

/// A policy ready for matching.
#[derive(Debug)]
pub struct CompiledPolicy {
    name: String,
    mode: Mode,
    dns_mode: DnsMode,
    deny_all: bool,
    rules: Vec<CompiledRule>,
    /// Exact names and IP literals → rules naming them, in document order.
    exact: HashMap<Box<str>, Vec<RuleId>>,
    /// Parent domain of `*.parent` → rules naming that wildcard.
    wildcard: HashMap<Box<str>, Vec<RuleId>>,
    inspected: Vec<Box<str>>,
    credentials: BTreeMap<String, Credential>,
    unknown_rule: CompiledRule,
}

impl CompiledPolicy {
    /// Compile a policy that passed [`crate::validate`]. Never fails: anything
    /// invalid that slips through (a policy built in code and not validated)
    /// simply matches nothing.
    pub fn compile(policy: &Policy) -> Self {
        // `denyAll` policies have no rules (validation insists); never match any.
        let egress: &[EgressRule] = if policy.spec.deny_all {
            &[]
        } else {
            &policy.spec.egress
        };
        let rules: Vec<CompiledRule> = egress.iter().map(CompiledRule::new).collect();
        let mut exact: HashMap<Box<str>, Vec<RuleId>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<RuleId>> = HashMap::new();
        let mut inspected: Vec<Box<str>> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let id = RuleId(u32::try_from(i).unwrap_or(u32::MAX));
            for pattern in &rule.patterns {
                let (map, key) = match pattern {
                    HostPattern::Exact(h) => (&mut exact, h.clone()),
                    HostPattern::Ip(ip) => (&mut exact, ip.to_string()),
                    HostPattern::Wildcard(parent) => (&mut wildcard, parent.clone()),
                };
                let ids = map.entry(key.into()).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            if rule.tls_mode() == TlsMode::Inspect {
                for h in rule.hosts() {
                    if !inspected.iter().any(|x| **x == *h) {
                        inspected.push(h.into());
                    }
                }
            }
        }
        Self {
            name: policy.metadata.name.clone(),
            mode: policy.spec.mode,
            dns_mode: policy.spec.dns,
            deny_all: policy.spec.deny_all,
            rules,
            exact,
            wildcard,
            inspected,
            credentials: policy.spec.credentials.clone(),
            unknown_rule: CompiledRule::unknown(),
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `enforce` or `audit`; the caller applies it to deny decisions.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `policy` or `forward`.
    pub fn dns_mode(&self) -> DnsMode {
        self.dns_mode
    }

    /// Whether the policy is `denyAll: true`.
    pub fn deny_all(&self) -> bool {
        self.deny_all
    }

    /// Connection-level decision for a destination name and port. The host
    /// (without `:port`) may be in any case, carry a trailing dot, be Unicode
    /// (IDNA), or be an IP literal (optionally in brackets). `Some(id)` is returned exactly when
    /// the decision is `Allow`.
    ///
    /// A host that some rule names on other ports only is denied with
    /// [`DenyReason::PortNotAllowed`], naming the first such rule.
    pub fn match_connection(&self, host: &str, port: u16) -> (Decision<'_>, Option<RuleId>) {
        if self.deny_all {
            return (deny(None, DenyReason::DenyAll), None);
        }
        let found = host::with_lookup_key(host, |key| {
            let mut host_rule: Option<RuleId> = None;
            for ids in [self.exact.get(key), self.wildcard_entry(key)]
                .into_iter()
                .flatten()
            {
                for &id in ids {
                    if self.rule_ref(id).is_some_and(|r| r.allows_port(port)) {
                        return Ok(id);
                    }
                    host_rule.get_or_insert(id);
                }
            }
            Err(host_rule)
        });
        match found {
            Some(Ok(id)) => (
                Decision::Allow {
                    rule: self.rule(id).name(),
                    detail: None,
                },
                Some(id),
            ),
            Some(Err(Some(id))) => (
                deny(Some(self.rule(id).name()), DenyReason::PortNotAllowed),
                None,
            ),
            Some(Err(None)) | None => (deny(None, DenyReason::NoMatchingRule), None),
        }
    }

    /// Whether any rule names this host (any port) — the policy DNS answer.
    pub fn name_allowed(&self, host: &str) -> bool {
        !self.deny_all
            && host::with_lookup_key(host, |key| {
                self.exact.contains_key(key) || self.wildcard_entry(key).is_some()
            })
            .unwrap_or(false)
    }

    /// The rule with this id. An id from another policy generation that is out
    /// of range yields a rule that matches and allows nothing (named `none`).
    pub fn rule(&self, id: RuleId) -> &CompiledRule {
        self.rule_ref(id).unwrap_or(&self.unknown_rule)
    }

    /// All rules in document order, with their ids.
    pub fn rules(&self) -> impl Iterator<Item = (RuleId, &CompiledRule)> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| (RuleId(u32::try_from(i).unwrap_or(u32::MAX)), r))
    }

    /// Request-level decision inside a rule.
    ///
    /// `method` is the request method as sent; `path` must already be
    /// normalised by the caller with [`judged_path`] (percent-decoding of
    /// unreserved characters, `.`/`..` segments resolved, no query or
    /// fragment; an empty path counts as `/`; `;` path parameters refused)
    /// — this function compares it byte for byte, case-sensitively.
    /// `query` is the raw query string without `?`; keys and values are
    /// percent-decoded here.
    ///
    /// `deny` rules are checked first; then the `access` preset or the `allow`
    /// rules in order. A rule without an `http` section allows every request.
    pub fn match_request(
        &self,
        id: RuleId,
        method: &str,
        path: &str,
        query: Option<&str>,
    ) -> Decision<'_> {
        let Some(rule) = self.rule_ref(id) else {
            return deny(None, DenyReason::NoMatchingRule);
        };
        let Some(http) = &rule.http else {
            return Decision::Allow {
                rule: rule.name(),
                detail: None,
            };
        };
        match http.decide(method, path, query) {
            HttpOutcome::Allowed(detail) => Decision::Allow {
                rule: rule.name(),
                detail: Some(detail),
            },
            HttpOutcome::Denied(detail) => Decision::Deny {
                rule: Some(rule.name()),
                detail: Some(detail),
                reason: DenyReason::DeniedByRule,
            },
            HttpOutcome::NoMatch => Decision::Deny {
                rule: Some(rule.name()),
                detail: None,
                reason: DenyReason::NoMatchingHttpRule,
            },
        }
    }

    /// Request-level decision for a request that may be served as any of several methods:
    /// the method as sent plus every method-override value it carries
    /// (`X-HTTP-Method-Override: DELETE`, `_method=DELETE`, …), which many server frameworks
    /// use instead of the real method. Each method is matched with [`Self::match_request`]
    /// on the same path and query; the first that is denied decides (the real method
    /// first, then `overrides` in order), so an override can never widen what the rule
    /// allows. When every one is allowed, the real method's allow is returned.
    pub fn match_request_methods(
        &self,
        id: RuleId,
        method: &str,
        overrides: &[&str],
        path: &str,
        query: Option<&str>,
    ) -> Decision<'_> {
        let real = self.match_request(id, method, path, query);
        if !real.is_allow() {
            return real;
        }
        overrides
            .iter()
            .map(|m| self.match_request(id, m, path, query))
            .find(|d| !d.is_allow())
            .unwrap_or(real)
    }

    /// Host patterns of every rule whose TLS mode is `inspect` — the names the
    /// sandbox CA may issue for (its name constraints). Normalised, deduplicated.
    pub fn inspected_hosts(&self) -> impl Iterator<Item = &str> {
        self.inspected.iter().map(|h| &**h)
    }

    /// The credential definitions, by name (what [`CompiledRule::credential`] refers to).
    pub fn credentials(&self) -> &BTreeMap<String, Credential> {
        &self.credentials
    }

    /// One credential definition.
    pub fn credential(&self, name: &str) -> Option<&Credential> {
        self.credentials.get(name)
    }

    fn rule_ref(&self, id: RuleId) -> Option<&CompiledRule> {
        usize::try_from(id.0).ok().and_then(|i| self.rules.get(i))
    }

    /// Rules whose wildcard covers `key`: its parent domain after the first label.
    fn wildcard_entry(&self, key: &str) -> Option<&Vec<RuleId>> {
        let (first, parent) = key.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }
}

fn deny<'p>(rule: Option<&'p str>, reason: DenyReason) -> Decision<'p> {
    Decision::Deny {
        rule,
        detail: None,
        reason,
    }
}
