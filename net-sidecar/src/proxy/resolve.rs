//! Anti-spoofing: the sidecar's own view of where a policy host lives.
//!
//! Owns: the resolver the data plane uses to check destinations (hickory, asking the same
//! upstream nameservers as the policy DNS server — the sidecar's resolv.conf, never the
//! agent's), its bounded TTL-respecting cache, and [`destination_verified`]: an original
//! destination is dialled only if the named host resolves to it, either here or in an
//! answer the policy DNS server gave the agent.
//! Must never: trust the agent's idea of an address (SNI/Host say which name, never where),
//! consult the sidecar's hosts file, or apply search domains (policy names are absolute).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

use crate::dns::AnswerCache;

/// Records the sidecar's resolver caches (hickory counts records, not names).
const RESOLVER_CACHE_RECORDS: usize = 4096;
/// Upper bound on how long a positive answer is reused, whatever its TTL says.
const MAX_POSITIVE_TTL: Duration = Duration::from_secs(300);
/// Upper bound on how long a negative answer is reused.
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// A boxed lookup future (keeps [`Resolve`] object-safe).
pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>>;

/// Where a host name lives, according to the sidecar. `Ok(vec![])` means "no address".
pub trait Resolve: Send + Sync + fmt::Debug {
    /// `host` is a normalised name (lower-case, no trailing dot) or an IP literal.
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a>;
}

/// The production resolver: hickory over UDP (TCP on truncation) to the given nameservers.
pub struct SystemResolver {
    inner: TokioResolver,
}

impl fmt::Debug for SystemResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemResolver").finish_non_exhaustive()
    }
}

impl SystemResolver {
    pub fn new(upstreams: &[SocketAddr], timeout: Duration) -> Self {
        let mut config = ResolverConfig::new();
        for &addr in upstreams {
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
        }
        let mut opts = ResolverOpts::default();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.cache_size = RESOLVER_CACHE_RECORDS;
        opts.positive_max_ttl = Some(MAX_POSITIVE_TTL);
        opts.negative_max_ttl = Some(MAX_NEGATIVE_TTL);
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.ndots = 0;
        let inner = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(opts)
            .build();
        Self { inner }
    }
}

impl Resolve for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a> {
        Box::pin(async move {
            if let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                return Ok(vec![ip]);
            }
            // Absolute name: no search domains, one query per family.
            match self.inner.lookup_ip(format!("{host}.")).await {
                Ok(found) => Ok(found.iter().map(canonical).collect()),
                Err(err) if err.is_no_records_found() || err.is_nx_domain() => Ok(Vec::new()),
                Err(err) => Err(err.to_string()),
            }
        })
    }
}

/// A fixed table, for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct StaticResolver(pub std::collections::HashMap<String, Vec<IpAddr>>);

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test helper
impl StaticResolver {
    pub fn with(entries: &[(&str, &[&str])]) -> Self {
        Self(
            entries
                .iter()
                .map(|(name, ips)| {
                    (
                        name.to_string(),
                        ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                    )
                })
                .collect(),
        )
    }
}

#[cfg(test)]
impl Resolve for StaticResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a> {
        Box::pin(async move {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![ip]);
            }
            Ok(self.0.get(host).cloned().unwrap_or_default())
        })
    }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Whether `host` really lives at `ip`: the policy DNS server answered the agent `ip` for
/// `host` (still within its TTL), or the sidecar's own resolver says so.
pub async fn destination_verified(
    resolver: &dyn Resolve,
    cache: &AnswerCache,
    host: &str,
    ip: IpAddr,
) -> bool {
    let ip = canonical(ip);
    if cache.answered(host, ip) {
        return true;
    }
    match resolver.lookup(host).await {
        Ok(addrs) => addrs.iter().any(|a| canonical(*a) == ip),
        Err(err) => {
            tracing::debug!(host, error = %err, "cannot resolve host to verify the original destination");
            false
        }
    }
}

/// Addresses that are never dialled on the agent's behalf, not even in audit mode: the
/// policy crate's forbidden ranges ([`palisade_policy::addr::FORBIDDEN_RANGES`]: loopback,
/// unspecified, link-local incl. cloud metadata 169.254.169.254, multicast, broadcast and
/// reserved, `::/96`, site-local), judged after the policy crate's canonical form, so an
/// IPv4-mapped or NAT64 (`64:ff9b::/96`) spelling of such an address is one too. One
/// classification for validation, the matcher and this fallback; never a copy of it here.
pub fn never_dialable(ip: IpAddr) -> bool {
    matches!(
        palisade_policy::addr::classify(ip),
        palisade_policy::addr::AddrClass::Forbidden(_)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[tokio::test]
    async fn verification_uses_the_resolver_or_the_dns_answers() {
        let resolver = StaticResolver::with(&[("allowed.test", &["198.18.1.10", "2001:db8::10"])]);
        let cache = AnswerCache::new(16);
        let v4: IpAddr = "198.18.1.10".parse().unwrap();
        let evil: IpAddr = "198.18.1.66".parse().unwrap();
        assert!(destination_verified(&resolver, &cache, "allowed.test", v4).await);
        assert!(
            destination_verified(
                &resolver,
                &cache,
                "allowed.test",
                "2001:db8::10".parse().unwrap()
            )
            .await
        );
        assert!(
            destination_verified(
                &resolver,
                &cache,
                "allowed.test",
                "::ffff:198.18.1.10".parse().unwrap()
            )
            .await
        );
        assert!(!destination_verified(&resolver, &cache, "allowed.test", evil).await);
        assert!(!destination_verified(&resolver, &cache, "other.test", v4).await);
        // The policy DNS server told the agent other.test is at `evil` — that counts.
        cache.record("other.test", &[evil], Duration::from_secs(60));
        assert!(destination_verified(&resolver, &cache, "other.test", evil).await);
        assert!(!destination_verified(&resolver, &cache, "allowed.test", evil).await);
    }

    #[test]
    fn never_dialable_ranges() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "fec0::1",
            // NAT64 and IPv4-compatible spellings of loopback, metadata and link-local: the
            // audit-mode fallback let these through while the policy crate forbade them.
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:1",
            "::a9fe:a9fe",
            "::7f00:1",
            "::c612:10a",
        ] {
            assert!(never_dialable(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "198.18.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "2001:db8::1",
            "fd00::1",
            "8.8.8.8",
        ] {
            assert!(!never_dialable(ip.parse().unwrap()), "{ip}");
        }
    }
}
