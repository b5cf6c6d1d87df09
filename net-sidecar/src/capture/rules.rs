//! The capture rules as data: one typed, ordered list per hook — the nat capture
//! ([`nat`]), the fence ([`fence`]) and the postrouting `leave` rule ([`leave`]) — each
//! rule a list of [`Match`]es, a [`Verdict`] and a comment. Both backends render these
//! lists ([`super::iptables`] one family at a time, [`super::nft`] both families in one
//! `inet` table), so "the same fence in both" holds by construction.
//!
//! Owns: which rules exist, in which order, what each matches and decides, and its comment.
//! Must never: know a backend's syntax (the renderers own that), or touch the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::config::CaptureConfig;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    /// "IPv4" / "IPv6".
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// "iptables" / "ip6tables".
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The loopback address REDIRECT rewrites locally generated traffic to.
    fn loopback(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Family::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }
}

/// All of IPv4 loopback (IPv6 has the one address).
const LOOPBACK_V4_NET: IpNet =
    IpNet::V4(ipnet::Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8));

/// The comment text every rule carries: `palisade: <what>`.
pub fn comment(what: &str) -> String {
    format!("palisade: {what}")
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    pub fn as_str(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// Destination ports of an [`Match::Proto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    One(u16),
    /// Inclusive.
    Range(u16, u16),
}

/// An ICMPv6 message type the fence lets through (neighbour discovery, MLD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv6Type {
    /// The type number (iptables `--icmpv6-type`).
    pub number: u8,
    /// The nft name.
    pub name: &'static str,
}

/// Neighbour discovery (RFC 4861): always hop limit 255, link-local by construction.
const NEIGHBOUR_DISCOVERY: [Icmpv6Type; 5] = [
    Icmpv6Type {
        number: 133,
        name: "nd-router-solicit",
    },
    Icmpv6Type {
        number: 134,
        name: "nd-router-advert",
    },
    Icmpv6Type {
        number: 135,
        name: "nd-neighbor-solicit",
    },
    Icmpv6Type {
        number: 136,
        name: "nd-neighbor-advert",
    },
    Icmpv6Type {
        number: 137,
        name: "nd-redirect",
    },
];

/// Multicast listener reports (RFC 2710, RFC 3810): always hop limit 1.
const MULTICAST_LISTENER: [Icmpv6Type; 3] = [
    Icmpv6Type {
        number: 131,
        name: "mld-listener-report",
    },
    Icmpv6Type {
        number: 132,
        name: "mld-listener-done",
    },
    Icmpv6Type {
        number: 143,
        name: "mld2-listener-report",
    },
];

/// One condition of a rule; a rule matches when all of its matches do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The sending socket belongs to this UID.
    Uid(u32),
    /// The sending socket belongs to this GID.
    Gid(u32),
    /// No process sent it: the packet has no socket owner (a socket already closed,
    /// TIME_WAIT answers, kernel replies). nft cannot say this as one match; its renderer
    /// lowers the rule that carries it into a `goto` (see [`super::nft`]).
    NoProcess,
    /// A packet of a tracked flow, in the reply direction.
    TrackedReply,
    /// A packet of a tracked flow, either direction.
    Tracked,
    /// A flow the nat capture rules redirected (DNAT).
    Redirected,
    /// Leaves by the loopback interface.
    OutLoopback,
    /// Leaves by any interface but loopback.
    NotOutLoopback,
    /// To this one address.
    DstHost(IpAddr),
    /// To this network.
    DstNet(IpNet),
    /// This transport protocol, to these destination ports (any port when `None`).
    Proto(L4, Option<Ports>),
    /// ICMPv6 of one of these types with exactly this hop limit.
    Icmpv6 {
        types: &'static [Icmpv6Type],
        hop_limit: u8,
    },
}

/// How a `reject` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// TCP reset: the client sees ECONNREFUSED at once.
    TcpReset,
    /// ICMP port unreachable: UDP clients see ECONNREFUSED.
    PortUnreachable,
    /// ICMP administratively prohibited: everything else.
    AdminProhibited,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave our chain: not captured (nat) or not fenced (filter).
    Pass,
    /// Redirect to this local port (nat only).
    Redirect(u16),
    Reject(Reject),
    Drop,
}

/// One rule: all `matches` → `verdict`, with `comment` (without the `palisade: ` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    pub comment: String,
}

fn rule(matches: Vec<Match>, verdict: Verdict, comment: impl Into<String>) -> Rule {
    Rule {
        matches,
        verdict,
        comment: comment.into(),
    }
}

/// The sidecar's own traffic passes; `verb` finishes the comment ("is not {verb}").
fn owner_passes(out: &mut Vec<Rule>, cfg: &CaptureConfig, verb: &str) {
    out.push(rule(
        vec![Match::Uid(cfg.sidecar_uid)],
        Verdict::Pass,
        format!("sidecar uid is not {verb}"),
    ));
    out.push(rule(
        vec![Match::Gid(cfg.sidecar_gid)],
        Verdict::Pass,
        format!("sidecar gid is not {verb}"),
    ));
}

/// The operator's excluded CIDRs (of `families`, in that order) and ports (tcp and udp)
/// pass, in nat and filter alike; `verb` finishes the comment ("excluded port is {verb}").
fn exclusion_passes(out: &mut Vec<Rule>, cfg: &CaptureConfig, families: &[Family], verb: &str) {
    for family in families {
        let nets: Vec<IpNet> = match family {
            Family::V4 => cfg.exclude_v4.iter().copied().map(IpNet::V4).collect(),
            Family::V6 => cfg.exclude_v6.iter().copied().map(IpNet::V6).collect(),
        };
        for net in nets {
            out.push(rule(
                vec![Match::DstNet(net)],
                Verdict::Pass,
                format!("excluded cidr is {verb}"),
            ));
        }
    }
    for &port in &cfg.exclude_ports {
        for proto in [L4::Tcp, L4::Udp] {
            out.push(rule(
                vec![Match::Proto(proto, Some(Ports::One(port)))],
                Verdict::Pass,
                format!("excluded port is {verb}"),
            ));
        }
    }
}

/// nat OUTPUT: every other UID's DNS to policy DNS, its TCP to transparent egress.
pub fn nat(cfg: &CaptureConfig, families: &[Family]) -> Vec<Rule> {
    let mut out = Vec::new();
    owner_passes(&mut out, cfg, "captured");
    exclusion_passes(&mut out, cfg, families, "not captured");
    // DNS before the loopback exemption: a stub resolver on 127.0.0.53 is captured too.
    for proto in [L4::Udp, L4::Tcp] {
        out.push(rule(
            vec![Match::Proto(proto, Some(Ports::One(53)))],
            Verdict::Redirect(cfg.dns_port),
            format!("dns ({}) to policy dns", proto.as_str()),
        ));
    }
    out.push(rule(
        vec![Match::OutLoopback],
        Verdict::Pass,
        "loopback is not captured",
    ));
    out.push(rule(
        vec![Match::Proto(L4::Tcp, None)],
        Verdict::Redirect(cfg.outbound_port),
        "tcp to transparent egress",
    ));
    out
}

/// filter OUTPUT, the fence: for every UID but the sidecar's, only what the nat step
/// redirected, the exclusions, the explicit proxy and loopback (but the sidecar's ports)
/// pass; everything else is rejected with a clear errno.
pub fn fence(cfg: &CaptureConfig, families: &[Family]) -> Vec<Rule> {
    let mut out = Vec::new();
    owner_passes(&mut out, cfg, "fenced");
    // Only the reply direction: replies of flows others opened towards the pod (inbound
    // services, ICMP errors about them). A packet in the original direction of a tracked
    // flow is the sender's own — the agent can bind the source port of a sidecar flow that
    // ended (or of a live UDP one) and would otherwise ride its conntrack entry out. The
    // agent's own redirected flows pass by the DNAT rules below, in both states.
    out.push(rule(
        vec![Match::TrackedReply],
        Verdict::Pass,
        "replies of inbound flows",
    ));
    // Packets of tracked flows that no process sends: a socket the sidecar already closed
    // (retransmissions, FIN), TIME_WAIT answers and kernel replies. The owner match above
    // misses them (no file behind the socket), and a process cannot send such a packet on
    // purpose; every packet from a process's socket goes on to the rules below.
    out.push(rule(
        vec![Match::NoProcess, Match::Tracked],
        Verdict::Pass,
        "tracked packets no process sends (closed sockets, time-wait, kernel)",
    ));
    // After REDIRECT the destination is the loopback address (the hook's out interface is
    // still the original route's, so match the address, not the interface).
    for &family in families {
        for (proto, port, what) in [
            (
                L4::Tcp,
                cfg.outbound_port,
                "redirected tcp to transparent egress",
            ),
            (L4::Udp, cfg.dns_port, "redirected dns (udp) to policy dns"),
            (L4::Tcp, cfg.dns_port, "redirected dns (tcp) to policy dns"),
        ] {
            out.push(rule(
                vec![
                    Match::DstHost(family.loopback()),
                    Match::Proto(proto, Some(Ports::One(port))),
                    Match::Redirected,
                ],
                Verdict::Pass,
                what,
            ));
        }
    }
    exclusion_passes(&mut out, cfg, families, "allowed");
    if let Some(port) = cfg.explicit_proxy_port {
        out.push(rule(
            vec![
                Match::OutLoopback,
                Match::Proto(L4::Tcp, Some(Ports::One(port))),
            ],
            Verdict::Pass,
            "agent may use the explicit proxy",
        ));
    }
    let range = Ports::Range(cfg.sidecar_ports.start, cfg.sidecar_ports.end);
    for (proto, reject) in [
        (L4::Tcp, Reject::TcpReset),
        (L4::Udp, Reject::PortUnreachable),
    ] {
        out.push(rule(
            vec![Match::OutLoopback, Match::Proto(proto, Some(range))],
            Verdict::Reject(reject),
            "sidecar ports are not for the agent",
        ));
    }
    out.push(rule(
        vec![Match::OutLoopback],
        Verdict::Pass,
        "loopback stays open",
    ));
    if families.contains(&Family::V6) {
        // Neighbour discovery (hop limit 255, link-local by construction) and MLD reports
        // (hop limit 1) keep the pod's own IPv6 links working; echo requests stay rejected.
        out.push(rule(
            vec![Match::Icmpv6 {
                types: &NEIGHBOUR_DISCOVERY,
                hop_limit: 255,
            }],
            Verdict::Pass,
            "ipv6 neighbour discovery",
        ));
        out.push(rule(
            vec![Match::Icmpv6 {
                types: &MULTICAST_LISTENER,
                hop_limit: 1,
            }],
            Verdict::Pass,
            "ipv6 multicast listener report",
        ));
    }
    out.push(rule(
        vec![Match::Proto(L4::Tcp, None)],
        Verdict::Reject(Reject::TcpReset),
        "fence: tcp that was not redirected",
    ));
    out.push(rule(
        vec![Match::Proto(L4::Udp, None)],
        Verdict::Reject(Reject::PortUnreachable),
        "fence: udp",
    ));
    out.push(rule(
        Vec::new(),
        Verdict::Reject(Reject::AdminProhibited),
        "fence: everything else (icmp, sctp, raw)",
    ));
    out
}

/// POSTROUTING, for every UID. After the kernel re-routed a redirected packet (nat
/// OUTPUT), filter OUTPUT still sees the original route's interface; only POSTROUTING sees
/// where it really goes. A socket bound to the pod interface (`SO_BINDTODEVICE`,
/// `IP_UNICAST_IF`, a link-local scope id) keeps its redirected packets — destination now
/// the loopback address, payload the agent's — on that interface. Nothing with a loopback
/// destination may leave by any interface but `lo`. POSTROUTING cannot answer, so these
/// are dropped (the client times out).
pub fn leave(families: &[Family]) -> Vec<Rule> {
    families
        .iter()
        .map(|family| {
            let dst = match family {
                Family::V4 => Match::DstNet(LOOPBACK_V4_NET),
                Family::V6 => Match::DstHost(family.loopback()),
            };
            rule(
                vec![Match::NotOutLoopback, dst],
                Verdict::Drop,
                "loopback destination off the loopback interface",
            )
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::capture::test_support::cfg;

    /// Every rule of the fence list appears in both renderings, in list order (the
    /// structural "same fence in both backends").
    #[test]
    fn both_backends_render_every_fence_rule_in_order() {
        let cfg = cfg();
        let nft = crate::capture::nft::init_script(&cfg);
        let nft_fence = &nft[nft.find("chain fence {").unwrap()..nft.find("chain leave").unwrap()];
        for family in [Family::V4, Family::V6] {
            let ipt = crate::capture::iptables::init_script(
                &cfg,
                family,
                true,
                &crate::capture::iptables::Existing::default(),
            );
            let ipt_fence = &ipt[ipt.find("*filter").unwrap()..ipt.find("*mangle").unwrap()];
            let mut at = 0;
            for r in fence(&cfg, &[family]) {
                let c = format!("\"{}\"", comment(&r.comment));
                let found = ipt_fence[at..]
                    .find(&c)
                    .unwrap_or_else(|| panic!("{c} missing or out of order in:\n{ipt_fence}"));
                at += found + c.len();
            }
        }
        let mut at = 0;
        for r in fence(&cfg, &[Family::V4, Family::V6]) {
            let c = format!("\"{}\"", comment(&r.comment));
            let found = nft_fence[at..]
                .find(&c)
                .unwrap_or_else(|| panic!("{c} missing or out of order in:\n{nft_fence}"));
            at += found + c.len();
        }
    }
}
