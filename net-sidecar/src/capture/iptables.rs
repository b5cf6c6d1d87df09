//! iptables-restore rule text: pure functions from [`CaptureConfig`] (and the parsed current
//! state of our own chains) to the exact text fed to `iptables-restore --noflush`. Which
//! rules exist and in which order is [`super::rules`]' business; this module renders those
//! lists one family at a time.
//!
//! We only ever touch our own chains (`PALISADE_OUTPUT` in nat, `PALISADE_FENCE` in filter,
//! `PALISADE_LEAVE` in mangle) and the single jump to each from `OUTPUT` (`POSTROUTING` for
//! the mangle chain). Every rule carries a `palisade: …` comment.

use std::fmt::Write as _;

use super::config::CaptureConfig;
use ipnet::IpNet;

use super::rules::{self, Family, Match, Ports, Reject, Rule, Verdict, comment};

/// Our chain in the nat table.
pub const NAT_CHAIN: &str = "PALISADE_OUTPUT";
/// Our chain in the filter table.
pub const FENCE_CHAIN: &str = "PALISADE_FENCE";
/// Comment on the OUTPUT → PALISADE_OUTPUT jump.
pub const NAT_JUMP_COMMENT: &str = "palisade: capture";
/// Comment on the OUTPUT → PALISADE_FENCE jump.
pub const FENCE_JUMP_COMMENT: &str = "palisade: fence";
/// Our chain in the mangle table, jumped to from `POSTROUTING`: the last look at a packet,
/// after the kernel re-routed it (see [`rules::leave`]).
pub const LEAVE_CHAIN: &str = "PALISADE_LEAVE";
/// Comment on the POSTROUTING → PALISADE_LEAVE jump.
pub const LEAVE_JUMP_COMMENT: &str = "palisade: loopback never leaves";

/// What of ours already exists in one family's ruleset (parsed from `iptables-save`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// `PALISADE_OUTPUT` exists in nat.
    pub nat_chain: bool,
    /// Rules in nat `OUTPUT` jumping to `PALISADE_OUTPUT`, verbatim `-A …` lines.
    pub nat_jumps: Vec<String>,
    /// `PALISADE_FENCE` exists in filter.
    pub fence_chain: bool,
    /// Rules in filter `OUTPUT` jumping to `PALISADE_FENCE`, verbatim `-A …` lines.
    pub fence_jumps: Vec<String>,
    /// `PALISADE_LEAVE` exists in mangle.
    pub leave_chain: bool,
    /// Rules in mangle `POSTROUTING` jumping to `PALISADE_LEAVE`, verbatim `-A …` lines.
    pub leave_jumps: Vec<String>,
    /// Number of rules (`-A` lines) in the dump that are not ours.
    pub foreign_rules: usize,
}

impl Existing {
    /// True when any of our chains or jumps is present.
    pub fn any_ours(&self) -> bool {
        self.nat_chain
            || self.fence_chain
            || self.leave_chain
            || !self.nat_jumps.is_empty()
            || !self.fence_jumps.is_empty()
            || !self.leave_jumps.is_empty()
    }
}

/// Parse `iptables-save` output (all tables) into what of ours is present.
pub fn parse_save(save: &str) -> Existing {
    let mut ex = Existing::default();
    let mut table = "";
    for line in save.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            table = match t {
                "nat" => "nat",
                "filter" => "filter",
                "mangle" => "mangle",
                _ => "other",
            };
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            match (table, name) {
                ("nat", NAT_CHAIN) => ex.nat_chain = true,
                ("filter", FENCE_CHAIN) => ex.fence_chain = true,
                ("mangle", LEAVE_CHAIN) => ex.leave_chain = true,
                _ => {}
            }
        } else if line.starts_with("-A ") {
            let jumps_to = |chain: &str| {
                line.split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
            };
            let in_ours = line.starts_with(&format!("-A {NAT_CHAIN} "))
                || line.starts_with(&format!("-A {FENCE_CHAIN} "))
                || line.starts_with(&format!("-A {LEAVE_CHAIN} "));
            if table == "nat" && line.starts_with("-A OUTPUT ") && jumps_to(NAT_CHAIN) {
                ex.nat_jumps.push(line.to_string());
            } else if table == "filter" && line.starts_with("-A OUTPUT ") && jumps_to(FENCE_CHAIN) {
                ex.fence_jumps.push(line.to_string());
            } else if table == "mangle"
                && line.starts_with("-A POSTROUTING ")
                && jumps_to(LEAVE_CHAIN)
            {
                ex.leave_jumps.push(line.to_string());
            } else if !in_ours {
                ex.foreign_rules += 1;
            }
        }
    }
    ex
}

/// One `-A` line per rule of `rules`.
fn render(out: &mut String, chain: &str, rules: &[Rule], family: Family) {
    for rule in rules {
        for matches in one_icmpv6_type_each(&rule.matches) {
            let matches: Vec<String> = matches.iter().map(match_text).collect();
            let matches = matches.join(" ");
            let sep = if matches.is_empty() { "" } else { " " };
            let _ = writeln!(
                out,
                "-A {chain}{sep}{matches} -m comment --comment \"{}\" -j {}",
                comment(&rule.comment),
                target(rule.verdict, family)
            );
        }
    }
}

/// iptables matches one ICMPv6 type per rule: a rule with a set of types becomes one rule
/// per type, in order.
fn one_icmpv6_type_each(matches: &[Match]) -> Vec<Vec<Match>> {
    let Some(&Match::Icmpv6 { types, hop_limit }) =
        matches.iter().find(|m| matches!(m, Match::Icmpv6 { .. }))
    else {
        return vec![matches.to_vec()];
    };
    types
        .iter()
        .map(|t| {
            matches
                .iter()
                .map(|m| match m {
                    Match::Icmpv6 { .. } => Match::Icmpv6 {
                        types: std::slice::from_ref(t),
                        hop_limit,
                    },
                    other => other.clone(),
                })
                .collect()
        })
        .collect()
}

fn match_text(m: &Match) -> String {
    match m {
        Match::Uid(uid) => format!("-m owner --uid-owner {uid}"),
        Match::Gid(gid) => format!("-m owner --gid-owner {gid}"),
        Match::NoProcess => "-m owner ! --uid-owner 0-4294967294".to_owned(),
        Match::TrackedReply => {
            "-m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY".to_owned()
        }
        Match::Tracked => "-m conntrack --ctstate RELATED,ESTABLISHED".to_owned(),
        Match::Redirected => "-m conntrack --ctstate DNAT".to_owned(),
        Match::OutLoopback => "-o lo".to_owned(),
        Match::NotOutLoopback => "! -o lo".to_owned(),
        Match::DstHost(ip) => format!("-d {}", IpNet::from(*ip)),
        Match::DstNet(net) => format!("-d {net}"),
        Match::Proto(proto, None) => format!("-p {}", proto.as_str()),
        Match::Proto(proto, Some(Ports::One(port))) => {
            format!("-p {} --dport {port}", proto.as_str())
        }
        Match::Proto(proto, Some(Ports::Range(start, end))) => {
            format!("-p {} --dport {start}:{end}", proto.as_str())
        }
        Match::Icmpv6 { types, hop_limit } => types
            .iter()
            .map(|t| {
                format!(
                    "-p ipv6-icmp -m icmp6 --icmpv6-type {} -m hl --hl-eq {hop_limit}",
                    t.number
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn target(verdict: Verdict, family: Family) -> String {
    let reject = |with: &str| format!("REJECT --reject-with {with}");
    match (verdict, family) {
        (Verdict::Pass, _) => "RETURN".to_owned(),
        (Verdict::Redirect(port), _) => format!("REDIRECT --to-ports {port}"),
        (Verdict::Drop, _) => "DROP".to_owned(),
        (Verdict::Reject(Reject::TcpReset), _) => reject("tcp-reset"),
        (Verdict::Reject(Reject::PortUnreachable), Family::V4) => reject("icmp-port-unreachable"),
        (Verdict::Reject(Reject::PortUnreachable), Family::V6) => reject("icmp6-port-unreachable"),
        (Verdict::Reject(Reject::AdminProhibited), Family::V4) => reject("icmp-admin-prohibited"),
        (Verdict::Reject(Reject::AdminProhibited), Family::V6) => reject("icmp6-adm-prohibited"),
    }
}

/// The `iptables-restore --noflush` text that installs (or refreshes) capture and fence for
/// one family. `nat` = false installs only the fence (no nat table for this family: TCP then
/// gets a reset instead of a redirect). Existing jumps are deleted and one is re-inserted at
/// the top of `OUTPUT`, so re-running yields the identical ruleset.
pub fn init_script(cfg: &CaptureConfig, family: Family, nat: bool, existing: &Existing) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# palisade capture + fence ({}), applied with {}-restore --noflush",
        family.label(),
        family.iptables()
    );
    if nat {
        out.push_str("*nat\n");
        let _ = writeln!(out, ":{NAT_CHAIN} - [0:0]");
        let _ = writeln!(out, "-F {NAT_CHAIN}");
        render(&mut out, NAT_CHAIN, &rules::nat(cfg, &[family]), family);
        for jump in &existing.nat_jumps {
            let _ = writeln!(out, "-D {}", &jump[3..]);
        }
        let _ = writeln!(
            out,
            "-I OUTPUT 1 -m comment --comment \"{NAT_JUMP_COMMENT}\" -j {NAT_CHAIN}"
        );
        out.push_str("COMMIT\n");
    }
    out.push_str("*filter\n");
    let _ = writeln!(out, ":{FENCE_CHAIN} - [0:0]");
    let _ = writeln!(out, "-F {FENCE_CHAIN}");
    render(&mut out, FENCE_CHAIN, &rules::fence(cfg, &[family]), family);
    for jump in &existing.fence_jumps {
        let _ = writeln!(out, "-D {}", &jump[3..]);
    }
    let _ = writeln!(
        out,
        "-I OUTPUT 1 -m comment --comment \"{FENCE_JUMP_COMMENT}\" -j {FENCE_CHAIN}"
    );
    out.push_str("COMMIT\n");
    out.push_str("*mangle\n");
    let _ = writeln!(out, ":{LEAVE_CHAIN} - [0:0]");
    let _ = writeln!(out, "-F {LEAVE_CHAIN}");
    render(&mut out, LEAVE_CHAIN, &rules::leave(&[family]), family);
    for jump in &existing.leave_jumps {
        let _ = writeln!(out, "-D {}", &jump[3..]);
    }
    let _ = writeln!(
        out,
        "-I POSTROUTING 1 -m comment --comment \"{LEAVE_JUMP_COMMENT}\" -j {LEAVE_CHAIN}"
    );
    out.push_str("COMMIT\n");
    out
}

/// The `--noflush` text that removes exactly our jumps and chains (None: nothing of ours).
pub fn cleanup_script(family: Family, existing: &Existing) -> Option<String> {
    if !existing.any_ours() {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(out, "# palisade cleanup ({})", family.label());
    if existing.nat_chain || !existing.nat_jumps.is_empty() {
        out.push_str("*nat\n");
        for jump in &existing.nat_jumps {
            let _ = writeln!(out, "-D {}", &jump[3..]);
        }
        if existing.nat_chain {
            let _ = writeln!(out, "-F {NAT_CHAIN}\n-X {NAT_CHAIN}");
        }
        out.push_str("COMMIT\n");
    }
    if existing.fence_chain || !existing.fence_jumps.is_empty() {
        out.push_str("*filter\n");
        for jump in &existing.fence_jumps {
            let _ = writeln!(out, "-D {}", &jump[3..]);
        }
        if existing.fence_chain {
            let _ = writeln!(out, "-F {FENCE_CHAIN}\n-X {FENCE_CHAIN}");
        }
        out.push_str("COMMIT\n");
    }
    if existing.leave_chain || !existing.leave_jumps.is_empty() {
        out.push_str("*mangle\n");
        for jump in &existing.leave_jumps {
            let _ = writeln!(out, "-D {}", &jump[3..]);
        }
        if existing.leave_chain {
            let _ = writeln!(out, "-F {LEAVE_CHAIN}\n-X {LEAVE_CHAIN}");
        }
        out.push_str("COMMIT\n");
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::capture::test_support::{cfg, pos};

    fn rules(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
            .collect()
    }

    #[test]
    fn sidecar_return_comes_before_every_redirect() {
        let t = init_script(&cfg(), Family::V4, true, &Existing::default());
        let uid = pos(&t, "-A PALISADE_OUTPUT -m owner --uid-owner 1337");
        let gid = pos(&t, "-A PALISADE_OUTPUT -m owner --gid-owner 1337");
        let first_redirect = pos(&t, "REDIRECT");
        assert!(uid < first_redirect && gid < first_redirect, "{t}");
        assert!(t.contains("-A PALISADE_OUTPUT -p tcp -m comment --comment \"palisade: tcp to transparent egress\" -j REDIRECT --to-ports 15001"), "{t}");
        assert!(t.contains("-p udp --dport 53 -m comment --comment \"palisade: dns (udp) to policy dns\" -j REDIRECT --to-ports 15053"), "{t}");
        // DNS is captured even to loopback resolvers; other loopback is not.
        assert!(pos(&t, "--dport 53") < pos(&t, "-A PALISADE_OUTPUT -o lo"));
        assert!(pos(&t, "-A PALISADE_OUTPUT -o lo") < pos(&t, "--to-ports 15001"));
    }

    #[test]
    fn every_rule_has_a_palisade_comment() {
        for family in [Family::V4, Family::V6] {
            let t = init_script(&cfg(), family, true, &Existing::default());
            for rule in rules(&t) {
                assert!(rule.contains("-m comment --comment \"palisade: "), "{rule}");
            }
            assert!(rules(&t).len() > 20, "{t}");
        }
    }

    #[test]
    fn exclusions_appear_in_nat_and_filter_of_the_right_family() {
        let v4 = init_script(&cfg(), Family::V4, true, &Existing::default());
        let v6 = init_script(&cfg(), Family::V6, true, &Existing::default());
        for chain in [NAT_CHAIN, FENCE_CHAIN] {
            for proto in ["tcp", "udp"] {
                for t in [&v4, &v6] {
                    assert!(
                        t.contains(&format!("-A {chain} -p {proto} --dport 22 ")),
                        "{t}"
                    );
                }
            }
            assert!(v4.contains(&format!("-A {chain} -d 10.0.0.0/8 ")), "{v4}");
            assert!(v6.contains(&format!("-A {chain} -d fd00::/8 ")), "{v6}");
        }
        assert!(!v4.contains("fd00::/8") && !v6.contains("10.0.0.0/8"));
        // Exclusions come before the redirect and before the final reject.
        assert!(pos(&v4, "-A PALISADE_OUTPUT -p tcp --dport 22") < pos(&v4, "--to-ports 15001"));
        assert!(pos(&v4, "-A PALISADE_FENCE -p tcp --dport 22") < pos(&v4, "fence: tcp that"));
    }

    #[test]
    fn fence_allows_only_our_redirects_then_rejects_with_clear_errors() {
        let t = init_script(&cfg(), Family::V4, true, &Existing::default());
        let dnat = pos(
            &t,
            "-d 127.0.0.1/32 -p tcp --dport 15001 -m conntrack --ctstate DNAT",
        );
        let reject_range = pos(&t, "-o lo -p tcp --dport 15000:15099");
        let lo = pos(&t, "-A PALISADE_FENCE -o lo -m comment");
        assert!(dnat < reject_range && reject_range < lo, "{t}");
        assert!(pos(&t, "--dport 15080") < reject_range);
        assert!(t.contains("-j REJECT --reject-with tcp-reset"));
        assert!(t.contains("-p udp -m comment --comment \"palisade: fence: udp\" -j REJECT --reject-with icmp-port-unreachable"));
        let last = rules(&t)
            .into_iter()
            .rfind(|l| l.starts_with("-A PALISADE_FENCE"))
            .unwrap();
        assert!(
            last.ends_with("-j REJECT --reject-with icmp-admin-prohibited"),
            "{last}"
        );
        assert!(
            !t.contains("-j ACCEPT"),
            "we never accept on others' behalf"
        );

        let t6 = init_script(&cfg(), Family::V6, true, &Existing::default());
        assert!(t6.contains("--reject-with icmp6-port-unreachable"));
        assert!(t6.contains("--reject-with icmp6-adm-prohibited"));
        assert!(t6.contains("--icmpv6-type 135 -m hl --hl-eq 255"));
        assert!(
            !t6.contains("--icmpv6-type 128"),
            "echo request stays fenced"
        );
        assert!(t6.contains("-d ::1/128 -p udp --dport 15053 -m conntrack --ctstate DNAT"));
        assert!(!t.contains("icmpv6"));
    }

    #[test]
    fn tracked_flows_pass_only_as_replies_or_without_a_process() {
        for family in [Family::V4, Family::V6] {
            let t = init_script(&cfg(), family, true, &Existing::default());
            assert!(
                !t.contains(
                    "-A PALISADE_FENCE -m conntrack --ctstate RELATED,ESTABLISHED -m comment"
                ),
                "no blanket accept of tracked flows: {t}"
            );
            let reply = pos(&t, "--ctstate RELATED,ESTABLISHED --ctdir REPLY");
            let socketless = pos(
                &t,
                "-m owner ! --uid-owner 0-4294967294 -m conntrack --ctstate RELATED,ESTABLISHED",
            );
            assert!(pos(&t, "-A PALISADE_FENCE -m owner --uid-owner 1337") < reply);
            assert!(
                reply < socketless && socketless < pos(&t, "--ctstate DNAT"),
                "{t}"
            );
        }
    }

    #[test]
    fn loopback_destinations_never_leave_by_another_interface() {
        let t = init_script(&cfg(), Family::V4, true, &Existing::default());
        assert!(
            t.contains("*mangle\n:PALISADE_LEAVE - [0:0]\n-F PALISADE_LEAVE\n"),
            "{t}"
        );
        assert!(t.contains("-A PALISADE_LEAVE ! -o lo -d 127.0.0.0/8 -m comment --comment \"palisade: loopback destination off the loopback interface\" -j DROP"), "{t}");
        assert!(t.contains("-I POSTROUTING 1 -m comment --comment \"palisade: loopback never leaves\" -j PALISADE_LEAVE"));
        let t6 = init_script(&cfg(), Family::V6, false, &Existing::default());
        assert!(t6.contains("-A PALISADE_LEAVE ! -o lo -d ::1/128 "), "{t6}");
        // Re-running replaces the jump; cleanup removes chain and jump.
        let save = "*mangle\n:POSTROUTING ACCEPT [0:0]\n:PALISADE_LEAVE - [0:0]\n\
            -A POSTROUTING -m comment --comment \"palisade: loopback never leaves\" -j PALISADE_LEAVE\n\
            -A PALISADE_LEAVE ! -o lo -d 127.0.0.0/8 -j DROP\nCOMMIT\n";
        let ex = parse_save(save);
        assert!(ex.leave_chain && ex.leave_jumps.len() == 1 && ex.foreign_rules == 0);
        let again = init_script(&cfg(), Family::V4, true, &ex);
        assert!(again.contains("-D POSTROUTING -m comment --comment \"palisade: loopback never leaves\" -j PALISADE_LEAVE\n"));
        let clean = cleanup_script(Family::V4, &ex).unwrap();
        assert!(clean.ends_with("*mangle\n-D POSTROUTING -m comment --comment \"palisade: loopback never leaves\" -j PALISADE_LEAVE\n-F PALISADE_LEAVE\n-X PALISADE_LEAVE\nCOMMIT\n"), "{clean}");
    }

    #[test]
    fn without_nat_only_the_fence_is_installed() {
        let t = init_script(&cfg(), Family::V6, false, &Existing::default());
        assert!(!t.contains("*nat") && !t.contains("REDIRECT"), "{t}");
        assert!(t.contains("*mangle"), "{t}");
        assert!(t.contains("*filter") && t.contains("-I OUTPUT 1"));
    }

    #[test]
    fn rerun_replaces_existing_jumps_instead_of_adding() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:PALISADE_OUTPUT - [0:0]\n\
            -A OUTPUT -m comment --comment \"palisade: capture\" -j PALISADE_OUTPUT\n\
            -A OUTPUT -d 1.2.3.4/32 -j ACCEPT\n\
            -A PALISADE_OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n\
            *filter\n:OUTPUT ACCEPT [0:0]\n:PALISADE_FENCE - [0:0]\n\
            -A OUTPUT -m comment --comment \"palisade: fence\" -j PALISADE_FENCE\nCOMMIT\n";
        let ex = parse_save(save);
        assert!(ex.nat_chain && ex.fence_chain);
        assert_eq!(ex.nat_jumps.len(), 1);
        assert_eq!(ex.fence_jumps.len(), 1);
        assert_eq!(ex.foreign_rules, 1);
        let t = init_script(&cfg(), Family::V4, true, &ex);
        assert!(
            t.contains("-D OUTPUT -m comment --comment \"palisade: capture\" -j PALISADE_OUTPUT\n")
        );
        assert!(
            pos(&t, "-D OUTPUT -m comment --comment \"palisade: fence\"")
                < pos(&t, "-I OUTPUT 1 -m comment --comment \"palisade: fence\"")
        );
        assert_eq!(t.matches("-I OUTPUT 1").count(), 2);
        assert!(t.contains("-F PALISADE_OUTPUT\n") && t.contains("-F PALISADE_FENCE\n"));
    }

    #[test]
    fn cleanup_removes_exactly_ours() {
        assert_eq!(cleanup_script(Family::V4, &Existing::default()), None);
        let ex = parse_save(
            "*nat\n:PALISADE_OUTPUT - [0:0]\n-A OUTPUT -j KUBE\n\
             -A OUTPUT -m comment --comment \"palisade: capture\" -j PALISADE_OUTPUT\nCOMMIT\n",
        );
        let t = cleanup_script(Family::V4, &ex).unwrap();
        assert_eq!(
            t.lines().skip(1).collect::<Vec<_>>(),
            [
                "*nat",
                "-D OUTPUT -m comment --comment \"palisade: capture\" -j PALISADE_OUTPUT",
                "-F PALISADE_OUTPUT",
                "-X PALISADE_OUTPUT",
                "COMMIT"
            ]
        );
        assert!(!t.contains("KUBE") && !t.contains("*filter"));
    }
}
