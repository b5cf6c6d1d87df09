//! Settings of the policy DNS server and the resolv.conf reader for its upstreams.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

/// Names the answer cache holds before the least recently used one is dropped.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// Where the sidecar finds its own (not the agent's) upstream nameservers.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Port of a `nameserver` line (resolv.conf has no syntax for another).
const NAMESERVER_PORT: u16 = 53;

/// The response code for a name the policy does not allow.
///
/// `Refused` says plainly "this resolver will not answer"; `NxDomain` says the name does
/// not exist, which glibc treats as "try the next search domain" — pick it where pods use
/// `ndots`/search lists (Kubernetes), since glibc stops the whole search on REFUSED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyRcode {
    Refused,
    NxDomain,
}

/// Whom to ask and how to say no (and, for the in-process tests' `bind`, where to listen:
/// the sidecar binds its sockets in the keeper, [`super::bind_pairs`]).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Every address gets a UDP socket and a TCP listener on the same port.
    #[cfg(test)]
    pub listen: Vec<SocketAddr>,
    /// Tried in order; the next one only after a timeout or an error of the previous.
    pub upstreams: Vec<SocketAddr>,
    pub deny_rcode: DenyRcode,
    /// Per upstream attempt: after it the next upstream is tried, after the last the
    /// client gets SERVFAIL.
    pub upstream_timeout: Duration,
}

impl DnsConfig {
    /// The `nameserver` lines of a resolv.conf, as port-53 socket addresses, in file order,
    /// without duplicates. Lines that are not valid addresses are skipped with a warning;
    /// a file without any usable nameserver is an error.
    pub fn upstreams_from_resolv_conf(path: &Path) -> anyhow::Result<Vec<SocketAddr>> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read upstream nameservers from {}; mount the pod's resolv.conf there \
                 (the sidecar forwards allowed DNS queries to its nameservers) or point the \
                 sidecar at another resolv.conf",
                path.display()
            )
        })?;
        let (upstreams, skipped) = parse_resolv_conf(&text);
        for line in &skipped {
            tracing::warn!(path = %path.display(), line = %line, "ignoring resolv.conf nameserver line: not an IP address");
        }
        anyhow::ensure!(
            !upstreams.is_empty(),
            "{} has no usable `nameserver <ip>` line{}; the policy DNS server needs at least \
             one upstream nameserver — add one or point the sidecar at another resolv.conf",
            path.display(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" (unparseable: {})", skipped.join(", "))
            }
        );
        Ok(upstreams)
    }
}

/// Nameserver addresses, and the nameserver arguments that were not addresses.
fn parse_resolv_conf(text: &str) -> (Vec<SocketAddr>, Vec<String>) {
    let mut upstreams = Vec::new();
    let mut skipped = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            // Comments (`#`, `;`), `search`, `options`, and blank lines.
            continue;
        }
        let Some(value) = words.next() else {
            skipped.push(String::from("(empty)"));
            continue;
        };
        match parse_nameserver(value) {
            Some(addr) if !upstreams.contains(&addr) => upstreams.push(addr),
            Some(_) => {}
            None => skipped.push(value.chars().take(64).collect()),
        }
    }
    (upstreams, skipped)
}

/// `192.0.2.1`, `2001:db8::1`, or `fe80::1%eth0` / `fe80::1%2` (a scoped link-local address).
fn parse_nameserver(value: &str) -> Option<SocketAddr> {
    if let Some((ip, zone)) = value.split_once('%') {
        let ip: Ipv6Addr = ip.parse().ok()?;
        let scope = match zone.parse::<u32>() {
            Ok(index) => index,
            Err(_) => nix::net::if_::if_nametoindex(zone).ok()?,
        };
        return Some(SocketAddr::V6(SocketAddrV6::new(
            ip,
            NAMESERVER_PORT,
            0,
            scope,
        )));
    }
    let ip: IpAddr = value.parse().ok()?;
    Some(SocketAddr::new(ip, NAMESERVER_PORT))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_v4_and_v6_nameservers_in_order() {
        let text = "# generated\n; another comment\nsearch default.svc.cluster.local svc.cluster.local\n\
                    nameserver 198.18.0.53\n  nameserver\t2001:db8::53  \noptions ndots:5\n\
                    nameserver 198.18.0.53\nnameserver fe80::1%1\n";
        let (ups, skipped) = parse_resolv_conf(text);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(
            ups,
            vec![
                "198.18.0.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 1)),
            ]
        );
    }

    #[test]
    fn comments_and_garbage_are_not_nameservers() {
        let text = "#nameserver 198.18.0.1\n# nameserver 198.18.0.2\nnameserver not-an-ip\n\
                    nameserver 198.18.0.3 # trailing words\nnameservers 198.18.0.4\n";
        let (ups, skipped) = parse_resolv_conf(text);
        assert_eq!(ups, vec!["198.18.0.3:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(skipped, vec!["not-an-ip".to_string()]);
    }

    #[test]
    fn file_errors_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("resolv.conf");
        let err = DnsConfig::upstreams_from_resolv_conf(&missing).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("cannot read upstream nameservers"), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");

        std::fs::write(
            &missing,
            "search example.test\noptions ndots:2\nnameserver bogus\n",
        )
        .unwrap();
        let msg = format!(
            "{:#}",
            DnsConfig::upstreams_from_resolv_conf(&missing).unwrap_err()
        );
        assert!(msg.contains("no usable `nameserver <ip>` line"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");

        std::fs::write(&missing, "nameserver ::1\n").unwrap();
        assert_eq!(
            DnsConfig::upstreams_from_resolv_conf(&missing).unwrap(),
            vec!["[::1]:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
