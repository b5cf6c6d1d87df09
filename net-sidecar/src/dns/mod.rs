//! Policy DNS: the resolver the agent sees on 15053 (udp + tcp; the capture rules redirect
//! the agent's port-53 traffic here), and the [`AnswerCache`] of what it answered.
//!
//! Owns: parsing client queries (with `hickory-proto`, never by hand), the per-name
//! decision (`dns: policy` forwards only names some egress rule names and refuses the rest;
//! `dns: forward` forwards everything), relaying the upstream answer unchanged, recording
//! A/AAAA answers so the data plane can check that an address the agent dials really came
//! from a name it was told about, and the DNS metrics and audit events.
//!
//! Must never: answer from anything but the upstream nameservers in the sidecar's own
//! resolv.conf, accept an upstream datagram whose id or question does not match what it
//! sent, buffer without bound, panic on a packet, or put a query name in a metric label.
//!
//! Layout: [`config`] (listen/upstream settings, resolv.conf), [`cache`] (the answer cache),
//! [`metrics`], `wire` (message checks and synthesised responses), `upstream` (the
//! exchange with a nameserver), `server` (sockets, per-query flow).

mod cache;
mod config;
mod metrics;
mod server;
mod upstream;
mod wire;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use cache::AnswerCache;
pub use config::{DEFAULT_CACHE_CAPACITY, DEFAULT_RESOLV_CONF, DenyRcode, DnsConfig};
pub use metrics::DnsMetrics;
#[cfg(test)]
pub use server::bind;
pub use server::bind_pairs;
// Part of the interface even where callers only hold the value `bind` returns.
#[allow(unused_imports)]
pub use server::DnsServer;

use palisade_policy::CompiledPolicy;
use palisade_policy::model::DnsMode;

/// What the server needs from a policy generation. [`CompiledPolicy`] is the real one;
/// the trait keeps the query path testable on its own.
pub(crate) trait DnsPolicy: Send + Sync + 'static {
    fn dns_mode(&self) -> DnsMode;
    /// `name` is lower-case ASCII without a trailing dot (presentation escapes kept).
    fn name_allowed(&self, name: &str) -> bool;
}

impl DnsPolicy for CompiledPolicy {
    fn dns_mode(&self) -> DnsMode {
        CompiledPolicy::dns_mode(self)
    }
    fn name_allowed(&self, name: &str) -> bool {
        CompiledPolicy::name_allowed(self, name)
    }
}
