//! Native nftables rule text: pure functions from [`CaptureConfig`] to the script fed to
//! `nft -f -`. Everything lives in our own `table inet palisade` (one table for both
//! families; nat in the `inet` family needs Linux >= 5.2). Re-running replaces the table
//! in the same transaction, so the result is identical; cleanup deletes the table.

use std::fmt::Write as _;

use super::config::CaptureConfig;
use super::rules::comment;

/// Our table (family `inet`).
pub const TABLE: &str = "palisade";

fn rule(out: &mut String, body: &str, what: &str) {
    let _ = writeln!(out, "\t\t{body} comment \"{}\"", comment(what));
}

/// The `nft -f` script that (re)creates `table inet palisade` atomically.
pub fn init_script(cfg: &CaptureConfig) -> String {
    let mut out = String::new();
    out.push_str("# palisade capture + fence (IPv4 and IPv6), applied with nft -f\n");
    // Declare-then-delete makes the delete succeed on the first run; all in one transaction.
    let _ = writeln!(out, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");

    out.push_str("\tchain nat_output {\n\t\ttype nat hook output priority -100; policy accept;\n");
    owner_rules(&mut out, cfg, "return", "captured");
    exclusions(&mut out, cfg, "return", "is not captured");
    for proto in ["udp", "tcp"] {
        rule(
            &mut out,
            &format!("{proto} dport 53 redirect to :{}", cfg.dns_port),
            &format!("dns ({proto}) to policy dns"),
        );
    }
    rule(
        &mut out,
        "oifname \"lo\" return",
        "loopback is not captured",
    );
    rule(
        &mut out,
        &format!("meta l4proto tcp redirect to :{}", cfg.outbound_port),
        "tcp to transparent egress",
    );
    out.push_str("\t}\n\n");

    out.push_str("\tchain fence {\n\t\ttype filter hook output priority 0; policy accept;\n");
    owner_rules(&mut out, cfg, "accept", "fenced");
    // Only the reply direction (see `fence_rules` in iptables.rs): a packet in the original
    // direction of a tracked flow is its sender's own, never a licence to ride the sidecar's.
    rule(
        &mut out,
        "ct state established,related ct direction reply accept",
        "replies of inbound flows",
    );
    // `meta skuid` matches only packets a process's socket sends; the others (a socket the
    // sidecar already closed, TIME_WAIT answers, kernel replies) of tracked flows pass,
    // as in iptables.rs. Every packet of a process goes on to `fenced`.
    rule(
        &mut out,
        "meta skuid 0-4294967294 goto fenced",
        "packets of a process: the fence",
    );
    rule(
        &mut out,
        "ct state established,related accept",
        "tracked packets no process sends (closed sockets, time-wait, kernel)",
    );
    rule(&mut out, "goto fenced", "everything else: the fence");
    out.push_str("\t}\n\n\tchain fenced {\n");
    // After `redirect` the destination is the loopback address (the hook's output
    // interface is still the original route's, so match the address, not oifname).
    for (l3, lo) in [("ip", "127.0.0.1"), ("ip6", "::1")] {
        for (proto, port, what) in [
            (
                "tcp",
                cfg.outbound_port,
                "redirected tcp to transparent egress",
            ),
            ("udp", cfg.dns_port, "redirected dns (udp) to policy dns"),
            ("tcp", cfg.dns_port, "redirected dns (tcp) to policy dns"),
        ] {
            rule(
                &mut out,
                &format!("{l3} daddr {lo} {proto} dport {port} ct status dnat accept"),
                what,
            );
        }
    }
    exclusions(&mut out, cfg, "accept", "is allowed");
    if let Some(port) = cfg.explicit_proxy_port {
        rule(
            &mut out,
            &format!("oifname \"lo\" tcp dport {port} accept"),
            "agent may use the explicit proxy",
        );
    }
    let range = format!("{}-{}", cfg.sidecar_ports.start, cfg.sidecar_ports.end);
    rule(
        &mut out,
        &format!("oifname \"lo\" tcp dport {range} reject with tcp reset"),
        "sidecar ports are not for the agent",
    );
    rule(
        &mut out,
        &format!("oifname \"lo\" udp dport {range} reject with icmpx type port-unreachable"),
        "sidecar ports are not for the agent",
    );
    rule(&mut out, "oifname \"lo\" accept", "loopback stays open");
    rule(
        &mut out,
        "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, \
         nd-neighbor-advert, nd-redirect } ip6 hoplimit 255 accept",
        "ipv6 neighbour discovery",
    );
    rule(
        &mut out,
        "icmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report } \
         ip6 hoplimit 1 accept",
        "ipv6 multicast listener report",
    );
    rule(
        &mut out,
        "meta l4proto tcp reject with tcp reset",
        "fence: tcp that was not redirected",
    );
    rule(
        &mut out,
        "meta l4proto udp reject with icmpx type port-unreachable",
        "fence: udp",
    );
    rule(
        &mut out,
        "reject with icmpx type admin-prohibited",
        "fence: everything else (icmp, sctp, raw)",
    );
    out.push_str("\t}\n\n");

    // The re-routed packet's real interface is known only here (see `leave_rules` in
    // iptables.rs): a loopback destination never leaves by another interface.
    out.push_str("\tchain leave {\n\t\ttype filter hook postrouting priority 0; policy accept;\n");
    for (l3, net) in [("ip", "127.0.0.0/8"), ("ip6", "::1")] {
        rule(
            &mut out,
            &format!("oifname != \"lo\" {l3} daddr {net} drop"),
            "loopback destination off the loopback interface",
        );
    }
    out.push_str("\t}\n}\n");
    out
}

fn owner_rules(out: &mut String, cfg: &CaptureConfig, verdict: &str, verb: &str) {
    rule(
        out,
        &format!("meta skuid {} {verdict}", cfg.sidecar_uid),
        &format!("sidecar uid is not {verb}"),
    );
    rule(
        out,
        &format!("meta skgid {} {verdict}", cfg.sidecar_gid),
        &format!("sidecar gid is not {verb}"),
    );
}

fn exclusions(out: &mut String, cfg: &CaptureConfig, verdict: &str, suffix: &str) {
    for net in &cfg.exclude_v4 {
        rule(
            out,
            &format!("ip daddr {net} {verdict}"),
            &format!("excluded cidr {suffix}"),
        );
    }
    for net in &cfg.exclude_v6 {
        rule(
            out,
            &format!("ip6 daddr {net} {verdict}"),
            &format!("excluded cidr {suffix}"),
        );
    }
    for port in &cfg.exclude_ports {
        for proto in ["tcp", "udp"] {
            rule(
                out,
                &format!("{proto} dport {port} {verdict}"),
                &format!("excluded port {suffix}"),
            );
        }
    }
}

/// The `nft -f` script that removes our table (and succeeds when it is absent).
pub fn cleanup_script() -> String {
    format!("# palisade cleanup\ntable inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// True when an `nft list tables` output shows our table.
pub fn table_present(list_tables: &str) -> bool {
    list_tables
        .lines()
        .any(|l| l.trim() == format!("table inet {TABLE}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::capture::test_support::{cfg, pos};

    fn rule_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("\t\t") && !l.starts_with("\t\ttype "))
            .collect()
    }

    #[test]
    fn table_is_replaced_atomically_and_every_rule_has_a_comment() {
        let t = init_script(&cfg());
        assert!(t.starts_with("# palisade"));
        assert!(
            t.contains("table inet palisade\ndelete table inet palisade\ntable inet palisade {\n")
        );
        let rules = rule_lines(&t);
        assert!(rules.len() > 20, "{t}");
        for r in rules {
            assert!(r.contains(" comment \"palisade: "), "{r}");
        }
    }

    #[test]
    fn sidecar_return_before_redirect_and_dns_before_loopback() {
        let t = init_script(&cfg());
        assert!(pos(&t, "meta skuid 1337 return") < pos(&t, "redirect to"));
        assert!(pos(&t, "meta skgid 1337 return") < pos(&t, "redirect to"));
        assert!(pos(&t, "udp dport 53 redirect to :15053") < pos(&t, "oifname \"lo\" return"));
        assert!(pos(&t, "oifname \"lo\" return") < pos(&t, "meta l4proto tcp redirect to :15001"));
    }

    #[test]
    fn exclusions_in_nat_and_fence() {
        let t = init_script(&cfg());
        let fence = pos(&t, "chain fence");
        for needle in [
            "ip daddr 10.0.0.0/8 ",
            "ip6 daddr fd00::/8 ",
            "tcp dport 22 ",
            "udp dport 22 ",
        ] {
            let first = pos(&t, needle);
            assert!(first < fence, "{needle} missing in nat");
            assert!(t[fence..].contains(needle), "{needle} missing in fence");
        }
    }

    #[test]
    fn fence_order_and_rejects() {
        let t = init_script(&cfg());
        let f = &t[pos(&t, "chain fence")..pos(&t, "chain leave")];
        assert!(
            pos(
                f,
                "ip daddr 127.0.0.1 tcp dport 15001 ct status dnat accept"
            ) < pos(f, "tcp dport 15000-15099 reject with tcp reset")
        );
        assert!(f.contains("ip6 daddr ::1 udp dport 15053 ct status dnat accept"));
        assert!(pos(f, "tcp dport 15080 accept") < pos(f, "tcp dport 15000-15099"));
        assert!(pos(f, "tcp dport 15000-15099") < pos(f, "oifname \"lo\" accept"));
        assert!(f.contains("meta l4proto udp reject with icmpx type port-unreachable"));
        let last = rule_lines(f).last().copied().unwrap();
        assert!(
            last.contains("reject with icmpx type admin-prohibited"),
            "{last}"
        );
        assert!(!f.contains("echo-request"));
    }

    #[test]
    fn tracked_flows_pass_only_as_replies_or_without_a_process() {
        let t = init_script(&cfg());
        let f = &t[pos(&t, "chain fence {")..];
        // No blanket accept of established traffic: the original direction of a tracked
        // flow is its sender's, and a process's packets always meet the fence.
        assert!(!f.contains("ct state established,related accept comment \"palisade: return"));
        let reply = pos(f, "ct state established,related ct direction reply accept");
        let process = pos(f, "meta skuid 0-4294967294 goto fenced");
        let socketless = pos(f, "\t\tct state established,related accept");
        let dnat = pos(f, "ct status dnat accept");
        assert!(pos(f, "meta skuid 1337 accept") < reply);
        assert!(
            reply < process && process < socketless && socketless < dnat,
            "{f}"
        );
        assert!(pos(f, "goto fenced comment \"palisade: everything else") < dnat);
    }

    #[test]
    fn loopback_destinations_never_leave_by_another_interface() {
        let t = init_script(&cfg());
        let leave = &t[pos(&t, "chain leave {")..];
        assert!(leave.contains("type filter hook postrouting priority 0; policy accept;"));
        assert!(leave.contains("oifname != \"lo\" ip daddr 127.0.0.0/8 drop"));
        assert!(leave.contains("oifname != \"lo\" ip6 daddr ::1 drop"));
    }

    #[test]
    fn cleanup_and_presence() {
        assert_eq!(
            cleanup_script(),
            "# palisade cleanup\ntable inet palisade\ndelete table inet palisade\n"
        );
        assert!(table_present("table ip nat\ntable inet palisade\n"));
        assert!(!table_present("table inet palisade2\n"));
    }
}
