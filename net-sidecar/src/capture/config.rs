//! The typed capture configuration: what `init` installs, parsed once from the flags.

use std::fmt;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use palisade_api::defaults;

/// An inclusive port range, `15000-15099`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortRange {
    /// The loopback ports reserved for the sidecar by default.
    pub const SIDECAR: PortRange = PortRange {
        start: defaults::SIDECAR_PORT_RANGE.0,
        end: defaults::SIDECAR_PORT_RANGE.1,
    };
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let parse = |p: &str| {
            p.trim().parse::<u16>().map_err(|_| {
                format!("invalid port {p:?} in range {s:?} (expected e.g. 15000-15099)")
            })
        };
        let (start, end) = (parse(a)?, parse(b)?);
        if start == 0 || start > end {
            return Err(format!(
                "invalid port range {s:?}: need 1 <= start <= end (e.g. 15000-15099)"
            ));
        }
        Ok(PortRange { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Parse one `--exclude-outbound-ports` element (a port; 0 is rejected).
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {s:?} (expected 1-65535)")),
        Ok(p) => Ok(p),
    }
}

/// Parse one `--exclude-outbound-cidrs` element; a bare address means a host route.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid CIDR {s:?} (expected e.g. 10.0.0.0/8 or fd00::/8)"))
}

/// Everything the rule generators need. Built by `init` from [`super::InitArgs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// The sidecar's UID: its traffic is neither captured nor fenced.
    pub sidecar_uid: u32,
    /// The sidecar's GID: same.
    pub sidecar_gid: u32,
    /// Transparent egress listener (all other TCP is redirected here).
    pub outbound_port: u16,
    /// Policy DNS listener (udp+tcp 53 are redirected here).
    pub dns_port: u16,
    /// Explicit proxy port the agent may reach on loopback (`None`: fenced like the others).
    pub explicit_proxy_port: Option<u16>,
    /// Loopback ports reserved for the sidecar; the agent gets refused there.
    pub sidecar_ports: PortRange,
    /// Destination ports that bypass capture and are allowed by the fence (tcp and udp).
    pub exclude_ports: Vec<u16>,
    /// IPv4 destinations that bypass capture and are allowed by the fence (any protocol).
    pub exclude_v4: Vec<Ipv4Net>,
    /// IPv6 destinations that bypass capture and are allowed by the fence (any protocol).
    pub exclude_v6: Vec<Ipv6Net>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            sidecar_uid: defaults::SIDECAR_UID,
            sidecar_gid: defaults::SIDECAR_GID,
            outbound_port: defaults::OUTBOUND_PORT,
            dns_port: defaults::DNS_PORT,
            explicit_proxy_port: Some(defaults::EXPLICIT_PROXY_PORT),
            sidecar_ports: PortRange::SIDECAR,
            exclude_ports: Vec::new(),
            exclude_v4: Vec::new(),
            exclude_v6: Vec::new(),
        }
    }
}

impl CaptureConfig {
    /// Split CIDRs by family, dedup ports, and check the combination makes sense.
    pub fn new(
        mut base: CaptureConfig,
        exclude_ports: &[u16],
        exclude_cidrs: &[IpNet],
    ) -> anyhow::Result<CaptureConfig> {
        let mut ports = exclude_ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        for (what, p) in [
            ("--outbound-port", base.outbound_port),
            ("--dns-port", base.dns_port),
        ] {
            if p == 0 {
                anyhow::bail!("{what} must be 1-65535");
            }
            if ports.contains(&p) {
                anyhow::bail!(
                    "{what} {p} is also in --exclude-outbound-ports; remove it from the exclusions"
                );
            }
        }
        if ports.contains(&53) {
            super::warn(
                "port 53 is excluded: DNS goes straight to the configured resolver, bypassing policy DNS",
            );
        }
        base.exclude_ports = ports;
        for net in exclude_cidrs {
            match net {
                IpNet::V4(n) if !base.exclude_v4.contains(n) => base.exclude_v4.push(*n),
                IpNet::V6(n) if !base.exclude_v6.contains(n) => base.exclude_v6.push(*n),
                _ => {}
            }
        }
        Ok(base)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn port_range_parses_and_rejects_nonsense() {
        assert_eq!(
            "15000-15099".parse::<PortRange>(),
            Ok(PortRange {
                start: 15000,
                end: 15099
            })
        );
        assert_eq!(
            "80".parse::<PortRange>().map(|r| (r.start, r.end)),
            Ok((80, 80))
        );
        assert!("15099-15000".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("a-b".parse::<PortRange>().is_err());
        assert!("1-70000".parse::<PortRange>().is_err());
    }

    #[test]
    fn cidrs_are_split_by_family_and_normalised() {
        let nets = [
            parse_cidr("10.1.2.3/8").unwrap(),
            parse_cidr("fd00::1/8").unwrap(),
            parse_cidr("192.0.2.7").unwrap(),
            parse_cidr("10.0.0.0/8").unwrap(),
        ];
        let c = CaptureConfig::new(CaptureConfig::default(), &[22, 22, 5432], &nets).unwrap();
        assert_eq!(
            c.exclude_v4
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            ["10.0.0.0/8", "192.0.2.7/32"]
        );
        assert_eq!(
            c.exclude_v6
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            ["fd00::/8"]
        );
        assert_eq!(c.exclude_ports, [22, 5432]);
        assert!(parse_cidr("nope").is_err());
        assert!(parse_port("0").is_err());
    }

    #[test]
    fn excluding_the_redirect_port_is_refused() {
        let err = CaptureConfig::new(CaptureConfig::default(), &[15001], &[]).unwrap_err();
        assert!(err.to_string().contains("--outbound-port"), "{err}");
    }
}
