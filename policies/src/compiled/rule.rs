//! One compiled egress rule: what the data plane needs to know about it after
//! the connection matched (TLS handling, credential, address fence, HTTP rules).
//!
//! Must never: let a loopback, link-local, unspecified, multicast or reserved
//! address be dialled, whatever `allowedCidrs` says.

use std::net::IpAddr;

use ipnet::IpNet;

use super::http::CompiledHttp;
use crate::addr::{self, AddrClass};
use crate::host::{self, HostPattern};
use crate::model::{EgressRule, TlsMode};

/// A compiled egress rule; see [`super::CompiledPolicy::rule`].
#[derive(Debug)]
pub struct CompiledRule {
    pub(super) name: Box<str>,
    pub(super) patterns: Vec<HostPattern>,
    hosts: Vec<Box<str>>,
    ports: Vec<u16>,
    tls: TlsMode,
    opaque_tcp: bool,
    credential: Option<Box<str>>,
    private_nets: Vec<IpNet>,
    pub(super) http: Option<CompiledHttp>,
    /// The placeholder for unknown ids: dials nothing.
    placeholder: bool,
}

impl CompiledRule {
    pub(super) fn new(rule: &EgressRule) -> Self {
        // Validation has refused bad hosts; should one slip through (a policy
        // compiled without validation) it simply never matches.
        let patterns: Vec<HostPattern> = rule
            .hosts
            .iter()
            .filter_map(|h| host::parse_pattern(h).ok())
            .collect();
        let mut ports: Vec<u16> = rule
            .ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .filter(|p| *p != 0)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let mut private_nets: Vec<IpNet> = rule
            .allowed_cidrs
            .iter()
            .map(|n| addr::canonical_net(*n))
            .filter(|n| addr::cidr_problem(*n).is_none())
            .collect();
        // A rule that names a private address literally may dial it.
        for p in &patterns {
            if let HostPattern::Ip(ip) = p
                && addr::classify(*ip) == AddrClass::Private
            {
                private_nets.push(IpNet::from(*ip));
            }
        }
        Self {
            name: rule.name.as_str().into(),
            hosts: patterns
                .iter()
                .map(|p| p.to_pattern_string().into())
                .collect(),
            patterns,
            ports,
            tls: effective_tls(rule),
            opaque_tcp: rule.opaque_tcp,
            credential: rule.credential.as_deref().map(Into::into),
            private_nets,
            http: rule.http.as_ref().map(CompiledHttp::new),
            placeholder: false,
        }
    }

    /// A rule that matches nothing and allows nothing; returned for unknown ids.
    pub(super) fn unknown() -> Self {
        Self {
            name: "none".into(),
            patterns: Vec::new(),
            hosts: Vec::new(),
            ports: Vec::new(),
            tls: TlsMode::Passthrough,
            opaque_tcp: false,
            credential: None,
            private_nets: Vec::new(),
            http: None,
            placeholder: true,
        }
    }

    /// The rule's name (a bounded metrics label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TLS mode in effect: as written, or `inspect` when the rule has
    /// `http` rules or a `credential`, else `passthrough`.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls
    }

    /// Whether connections must be terminated and parsed as HTTP: the rule
    /// inspects TLS, has HTTP rules, or injects a credential.
    pub fn needs_l7(&self) -> bool {
        self.tls == TlsMode::Inspect || self.http.is_some() || self.credential.is_some()
    }

    /// Whether the rule has an `http` section (otherwise every request passes).
    pub fn has_http_rules(&self) -> bool {
        self.http.is_some()
    }

    /// Whether connections that are neither TLS nor HTTP may pass.
    pub fn opaque_tcp(&self) -> bool {
        self.opaque_tcp
    }

    /// Name of the credential (a key of [`super::CompiledPolicy::credentials`]).
    pub fn credential(&self) -> Option<&str> {
        self.credential.as_deref()
    }

    /// Normalised host patterns (`api.github.com`, `*.example.com`, `2001:db8::7`).
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| &**h)
    }

    /// Destination ports, sorted.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub(super) fn allows_port(&self, port: u16) -> bool {
        self.ports.binary_search(&port).is_ok()
    }

    /// Whether a resolved upstream address may be dialled for this rule:
    /// public addresses always; private ones (RFC 1918, CGNAT, ULA) only when
    /// `allowedCidrs` names them (or the rule names the address as a host);
    /// loopback, link-local (incl. 169.254.169.254), unspecified, multicast,
    /// broadcast and reserved never. IPv4-mapped and NAT64 IPv6 addresses are
    /// judged by the IPv4 address they carry.
    pub fn allows_address(&self, ip: IpAddr) -> bool {
        if self.placeholder {
            return false;
        }
        let ip = addr::canonical(ip);
        match addr::classify(ip) {
            AddrClass::Public => true,
            AddrClass::Private => self.private_nets.iter().any(|n| n.contains(&ip)),
            AddrClass::Forbidden(_) => false,
        }
    }
}

/// `tls` as written, or its default.
pub fn effective_tls(rule: &EgressRule) -> TlsMode {
    rule.tls
        .unwrap_or(if rule.http.is_some() || rule.credential.is_some() {
            TlsMode::Inspect
        } else {
            TlsMode::Passthrough
        })
}
