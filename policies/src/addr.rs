//! Address classes: which resolved upstream addresses a rule may dial.
//!
//! Owns: the tables of forbidden (loopback, link-local, unspecified, multicast,
//! broadcast, reserved) and private (RFC 1918, CGNAT, ULA) ranges, and the one
//! classification function that both validation (`allowedCidrs`) and the
//! compiled matcher ([`crate::compiled::CompiledRule::allows_address`]) use.
//!
//! Must never: treat an IPv4-mapped (`::ffff:a.b.c.d`) or NAT64
//! (`64:ff9b::a.b.c.d`) address differently from the IPv4 address it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What an address is, for the purpose of dialling it on a workload's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// Globally routable (including documentation and RFC 2544 benchmarking
    /// ranges, which the test harness uses): always allowed.
    Public,
    /// RFC 1918, CGNAT (100.64.0.0/10) or ULA (fc00::/7): only when a rule's
    /// `allowedCidrs` names it.
    Private,
    /// Never dialled, whatever the policy says. The string names the range.
    Forbidden(&'static str),
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len))
}

const fn v6(segments: [u16; 8], len: u8) -> IpNet {
    let [a, b, c, d, e, f, g, h] = segments;
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(a, b, c, d, e, f, g, h),
        len,
    ))
}

/// Ranges that are never dialled, with the name used in error messages.
pub const FORBIDDEN_RANGES: &[(IpNet, &str)] = &[
    (
        v4(0, 0, 0, 0, 8),
        "unspecified (\"this network\", 0.0.0.0/8)",
    ),
    (v4(127, 0, 0, 0, 8), "loopback (127.0.0.0/8)"),
    (
        v4(169, 254, 0, 0, 16),
        "link-local and cloud metadata (169.254.0.0/16)",
    ),
    (v4(224, 0, 0, 0, 4), "multicast (224.0.0.0/4)"),
    (v4(240, 0, 0, 0, 4), "reserved and broadcast (240.0.0.0/4)"),
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified (::)"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback (::1)"),
    (
        v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "IPv4-compatible, deprecated (::/96)",
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "link-local (fe80::/10)",
    ),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local, deprecated (fec0::/10)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast (ff00::/8)"),
];

/// Ranges that a rule may open with `allowedCidrs`.
pub const PRIVATE_RANGES: &[(IpNet, &str)] = &[
    (v4(10, 0, 0, 0, 8), "RFC 1918 (10.0.0.0/8)"),
    (v4(172, 16, 0, 0, 12), "RFC 1918 (172.16.0.0/12)"),
    (v4(192, 168, 0, 0, 16), "RFC 1918 (192.168.0.0/16)"),
    (v4(100, 64, 0, 0, 10), "CGNAT (100.64.0.0/10)"),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local (fc00::/7)",
    ),
];

/// The NAT64 well-known prefix `64:ff9b::/96`.
const NAT64: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);
/// The IPv4-mapped prefix `::ffff:0:0/96`.
const MAPPED: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);

/// The address as it will really be reached: IPv4-mapped and NAT64 addresses
/// become the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if MAPPED.contains(&v6) || NAT64.contains(&v6) {
                let o = v6.octets();
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                ip
            }
        }
    }
}

/// Classify an address (after [`canonical`]).
pub fn classify(ip: IpAddr) -> AddrClass {
    let ip = canonical(ip);
    if let Some((_, why)) = FORBIDDEN_RANGES.iter().find(|(net, _)| net.contains(&ip)) {
        return AddrClass::Forbidden(why);
    }
    if PRIVATE_RANGES.iter().any(|(net, _)| net.contains(&ip)) {
        return AddrClass::Private;
    }
    AddrClass::Public
}

/// A network as it will really be reached: a CIDR inside `::ffff:0:0/96` becomes
/// the IPv4 network it maps, host bits are cleared.
pub fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(n6) = net
        && n6.prefix_len() >= 96
        && MAPPED.contains(&n6.network())
    {
        let o = n6.network().octets();
        let addr = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
        if let Ok(n4) = Ipv4Net::new(addr, n6.prefix_len() - 96) {
            return IpNet::V4(n4);
        }
    }
    net
}

/// Why a CIDR may not appear in `allowedCidrs`, or `None` when it may.
/// It may only lie inside one private range.
pub fn cidr_problem(net: IpNet) -> Option<String> {
    let net = canonical_net(net);
    if PRIVATE_RANGES.iter().any(|(range, _)| range.contains(&net)) {
        return None;
    }
    let overlaps = |range: &IpNet| range.contains(&net) || net.contains(range);
    if let Some((_, why)) = FORBIDDEN_RANGES.iter().find(|(range, _)| overlaps(range)) {
        return Some(format!(
            "`{net}` includes {why} addresses, which are never dialled; \
             allowedCidrs may only name private ranges (10.0.0.0/8, 172.16.0.0/12, \
             192.168.0.0/16, 100.64.0.0/10, fc00::/7)"
        ));
    }
    if let IpNet::V6(n6) = net
        && (n6.contains(&MAPPED) || n6.contains(&NAT64))
    {
        return Some(format!(
            "`{net}` includes IPv4-mapped or NAT64 addresses (and so loopback); \
             name the IPv4 range instead"
        ));
    }
    if let Some((_, what)) = PRIVATE_RANGES.iter().find(|(range, _)| overlaps(range)) {
        return Some(format!(
            "`{net}` reaches beyond the private range {what}; narrow it to lie inside it"
        ));
    }
    Some(format!(
        "`{net}` is a public range: public addresses are always allowed, allowedCidrs \
         only opens private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, \
         100.64.0.0/10, fc00::/7); remove it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classes() {
        for s in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "fe80::1",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "0.1.2.3",
        ] {
            assert!(matches!(classify(ip(s)), AddrClass::Forbidden(_)), "{s}");
        }
        for s in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "fc00::1",
        ] {
            assert_eq!(classify(ip(s)), AddrClass::Private, "{s}");
        }
        for s in [
            "8.8.8.8",
            "198.18.0.1",
            "198.19.255.1",
            "192.0.2.1",
            "203.0.113.9",
            "2001:db8::1",
            "2606:4700::1",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert_eq!(classify(ip(s)), AddrClass::Public, "{s}");
        }
    }

    #[test]
    fn mapped_and_nat64_use_ipv4_meaning() {
        assert!(matches!(
            classify(ip("::ffff:127.0.0.1")),
            AddrClass::Forbidden(_)
        ));
        assert!(matches!(
            classify(ip("::ffff:169.254.169.254")),
            AddrClass::Forbidden(_)
        ));
        assert!(matches!(
            classify(ip("64:ff9b::7f00:1")),
            AddrClass::Forbidden(_)
        ));
        assert_eq!(classify(ip("::ffff:10.0.0.1")), AddrClass::Private);
        assert_eq!(classify(ip("::ffff:8.8.8.8")), AddrClass::Public);
    }

    #[test]
    fn cidrs() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(cidr_problem(net("10.0.0.0/8")), None);
        assert_eq!(cidr_problem(net("10.1.2.3/24")), None);
        assert_eq!(cidr_problem(net("fd00::/8")), None);
        assert_eq!(cidr_problem(net("::ffff:10.0.0.0/104")), None);
        assert!(
            cidr_problem(net("127.0.0.0/8"))
                .unwrap()
                .contains("loopback")
        );
        assert!(
            cidr_problem(net("0.0.0.0/0"))
                .unwrap()
                .contains("never dialled")
        );
        assert!(
            cidr_problem(net("169.254.169.254/32"))
                .unwrap()
                .contains("link-local")
        );
        assert!(
            cidr_problem(net("fe80::/64"))
                .unwrap()
                .contains("link-local")
        );
        assert!(cidr_problem(net("::/0")).unwrap().contains("never dialled"));
        assert!(
            cidr_problem(net("::ffff:127.0.0.1/128"))
                .unwrap()
                .contains("loopback")
        );
        assert!(
            cidr_problem(net("8.8.8.0/24"))
                .unwrap()
                .contains("public range")
        );
        assert!(
            cidr_problem(net("10.0.0.0/7"))
                .unwrap()
                .contains("beyond the private range")
        );
    }
}
