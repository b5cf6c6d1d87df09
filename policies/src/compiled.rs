//! The compiled matcher: built once per policy generation, shared read-only by
//! every connection. Matching is O(rules) or better and does not allocate for
//! ASCII hosts.
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
//! policy.inspected_hosts() -> impl Iterator<Item=&str>      // names for the CA's name constraints
//! ```

use std::net::IpAddr;

use crate::decision::Decision;
use crate::model::{DnsMode, Mode, Policy, TlsMode};

/// Index of an egress rule inside one [`CompiledPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(pub u32);

#[derive(Debug)]
pub struct CompiledPolicy {
    _todo: (),
}

#[derive(Debug)]
pub struct CompiledRule {
    _todo: (),
}

impl CompiledPolicy {
    /// Compile a policy that passed [`crate::validate`]. Never fails.
    pub fn compile(_policy: &Policy) -> Self {
        todo!("policy helper")
    }
    pub fn name(&self) -> &str {
        todo!()
    }
    pub fn mode(&self) -> Mode {
        todo!()
    }
    pub fn dns_mode(&self) -> DnsMode {
        todo!()
    }
    /// Connection-level decision for a destination name and port. The host may
    /// be in any case, carry a trailing dot, or be Unicode (IDNA).
    pub fn match_connection(&self, _host: &str, _port: u16) -> (Decision<'_>, Option<RuleId>) {
        todo!()
    }
    /// Whether any rule names this host (any port) — the policy DNS answer.
    pub fn name_allowed(&self, _host: &str) -> bool {
        todo!()
    }
    pub fn rule(&self, _id: RuleId) -> &CompiledRule {
        todo!()
    }
    /// Request-level decision inside a rule. `path` is already normalised;
    /// `query` is the raw query string without `?`.
    pub fn match_request(&self, _id: RuleId, _method: &str, _path: &str, _query: Option<&str>) -> Decision<'_> {
        todo!()
    }
}

impl CompiledRule {
    pub fn name(&self) -> &str {
        todo!()
    }
    pub fn tls_mode(&self) -> TlsMode {
        todo!()
    }
    pub fn opaque_tcp(&self) -> bool {
        todo!()
    }
    pub fn credential(&self) -> Option<&str> {
        todo!()
    }
    /// Whether a resolved upstream address may be dialled for this rule:
    /// public addresses always; private ones only when `allowedCidrs` names them;
    /// loopback, link-local, unspecified, multicast never.
    pub fn allows_address(&self, _ip: IpAddr) -> bool {
        todo!()
    }
}
