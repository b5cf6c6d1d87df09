//! Native nftables rule text: pure functions from [`CaptureConfig`] to the script fed to
//! `nft -f -`. Everything lives in our own `table inet palisade` (one table for both
//! families; nat in the `inet` family needs Linux >= 5.2). Re-running replaces the table
//! in the same transaction, so the result is identical; cleanup deletes the table. Which
//! rules exist and in which order is [`super::rules`]' business; this module renders those
//! lists for both families at once.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::config::CaptureConfig;
use super::rules::{self, Family, Match, Ports, Reject, Rule, Verdict, comment};

/// Our table (family `inet`).
pub const TABLE: &str = "palisade";

/// Both families: one `inet` table holds the rules of each.
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// The `nft -f` script that (re)creates `table inet palisade` atomically.
pub fn init_script(cfg: &CaptureConfig) -> String {
    let mut out = String::new();
    out.push_str("# palisade capture + fence (IPv4 and IPv6), applied with nft -f\n");
    // Declare-then-delete makes the delete succeed on the first run; all in one transaction.
    let _ = writeln!(out, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");

    out.push_str("\tchain nat_output {\n\t\ttype nat hook output priority -100; policy accept;\n");
    render(&mut out, &rules::nat(cfg, &FAMILIES), "return");
    out.push_str("\t}\n\n");

    out.push_str("\tchain fence {\n\t\ttype filter hook output priority 0; policy accept;\n");
    render(&mut out, &rules::fence(cfg, &FAMILIES), "accept");
    out.push_str("\t}\n\n");

    // The re-routed packet's real interface is known only in postrouting ([`rules::leave`]).
    out.push_str("\tchain leave {\n\t\ttype filter hook postrouting priority 0; policy accept;\n");
    render(&mut out, &rules::leave(&FAMILIES), "accept");
    out.push_str("\t}\n}\n");
    out
}

fn rule_line(out: &mut String, body: &str, what: &str) {
    let _ = writeln!(out, "\t\t{body} comment \"{}\"", comment(what));
}

/// One line per rule; [`Verdict::Pass`] is `pass` (`return` in nat, `accept` in filter).
///
/// nft has no "no socket owner" match (`meta skuid` matches only packets a process's socket
/// sends), so a rule with [`Match::NoProcess`] is lowered: a process's packets go to the
/// chain `fenced`, which holds the rest of the list; the others pass if the rule's other
/// matches hold; everything else goes to `fenced` too.
fn render(out: &mut String, rules: &[Rule], pass: &str) {
    for rule in rules {
        if !rule.matches.contains(&Match::NoProcess) {
            rule_line(out, &body(&rule.matches, rule.verdict, pass), &rule.comment);
            continue;
        }
        rule_line(
            out,
            "meta skuid 0-4294967294 goto fenced",
            "packets of a process: the fence",
        );
        rule_line(out, &body(&rule.matches, rule.verdict, pass), &rule.comment);
        rule_line(out, "goto fenced", "everything else: the fence");
        out.push_str("\t}\n\n\tchain fenced {\n");
    }
}

/// The rule text before the comment. [`Match::NoProcess`] has no text of its own (see
/// [`render`]).
fn body(matches: &[Match], verdict: Verdict, pass: &str) -> String {
    let mut words: Vec<String> = matches.iter().filter_map(match_text).collect();
    words.push(match verdict {
        Verdict::Pass => pass.to_owned(),
        Verdict::Redirect(port) => format!("redirect to :{port}"),
        Verdict::Drop => "drop".to_owned(),
        Verdict::Reject(Reject::TcpReset) => "reject with tcp reset".to_owned(),
        Verdict::Reject(Reject::PortUnreachable) => {
            "reject with icmpx type port-unreachable".to_owned()
        }
        Verdict::Reject(Reject::AdminProhibited) => {
            "reject with icmpx type admin-prohibited".to_owned()
        }
    });
    words.join(" ")
}

fn match_text(m: &Match) -> Option<String> {
    let l3 = |ip: &IpAddr| if ip.is_ipv4() { "ip" } else { "ip6" };
    Some(match m {
        Match::Uid(uid) => format!("meta skuid {uid}"),
        Match::Gid(gid) => format!("meta skgid {gid}"),
        Match::NoProcess => return None,
        Match::TrackedReply => "ct state established,related ct direction reply".to_owned(),
        Match::Tracked => "ct state established,related".to_owned(),
        Match::Redirected => "ct status dnat".to_owned(),
        Match::OutLoopback => "oifname \"lo\"".to_owned(),
        Match::NotOutLoopback => "oifname != \"lo\"".to_owned(),
        Match::DstHost(ip) => format!("{} daddr {ip}", l3(ip)),
        Match::DstNet(net) => format!("{} daddr {net}", l3(&net.addr())),
        Match::Proto(proto, None) => format!("meta l4proto {}", proto.as_str()),
        Match::Proto(proto, Some(Ports::One(port))) => format!("{} dport {port}", proto.as_str()),
        Match::Proto(proto, Some(Ports::Range(start, end))) => {
            format!("{} dport {start}-{end}", proto.as_str())
        }
        Match::Icmpv6 { types, hop_limit } => {
            let names: Vec<&str> = types.iter().map(|t| t.name).collect();
            format!(
                "icmpv6 type {{ {} }} ip6 hoplimit {hop_limit}",
                names.join(", ")
            )
        }
    })
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
