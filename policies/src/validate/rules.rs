//! Egress rules: names, hosts, ports, TLS/HTTP/credential combinations,
//! `allowedCidrs`, and the rules that keep rule order meaningless (unique
//! names; no host pattern and port claimed twice).

use std::collections::HashMap;

use super::{Problems, http, syntax};
use crate::addr;
use crate::compiled::effective_tls;
use crate::error::FieldPath;
use crate::host;
use crate::model::{EgressRule, Policy, TlsMode};

pub fn check(policy: &Policy, spec: &FieldPath, out: &mut Problems) {
    let egress = &policy.spec.egress;
    if policy.spec.deny_all && !egress.is_empty() {
        out.push(
            spec.key("denyAll"),
            format!(
                "denyAll is true but {} egress rule(s) are listed; remove the rules to deny \
                 everything, or remove `denyAll` to allow what they name",
                egress.len()
            ),
        );
    }
    if !policy.spec.deny_all && egress.is_empty() {
        out.push(
            spec.key("egress"),
            "no egress rules: this policy would deny all traffic; add rules, or set \
             `denyAll: true` to say on purpose that nothing may leave",
        );
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    // (normalised host pattern, port) → index of the first rule claiming it.
    let mut claimed: HashMap<(String, u16), usize> = HashMap::new();
    for (i, rule) in egress.iter().enumerate() {
        let path = spec.key("egress").index(i);
        if let Err(why) = syntax::dns_label(&rule.name) {
            out.push(path.key("name"), format!("rule name `{}` {why}", rule.name));
        } else if let Some(&first) = names.get(rule.name.as_str()) {
            out.push(
                path.key("name"),
                format!(
                    "duplicate rule name `{}` (first used by spec.egress[{first}]); rule names \
                     must be unique, they name the rule in metrics and audit events",
                    rule.name
                ),
            );
        } else {
            names.insert(&rule.name, i);
        }
        let patterns = check_hosts(rule, &path, out);
        let ports = check_ports(rule, &path, out);
        for (h, pattern) in &patterns {
            for port in &ports {
                if let Some(&first) = claimed.get(&(pattern.clone(), *port)) {
                    if first != i {
                        out.push(
                            path.key("hosts").index(*h),
                            format!(
                                "host `{pattern}` on port {port} is already matched by rule `{}` \
                                 (spec.egress[{first}]); a connection follows exactly one rule, \
                                 so merge the rules or give them different ports",
                                egress[first].name
                            ),
                        );
                    }
                } else {
                    claimed.insert((pattern.clone(), *port), i);
                }
            }
        }
        check_modes(policy, rule, &path, out);
        if let Some(rules) = &rule.http {
            http::check(rules, &path.key("http"), out);
        }
        check_cidrs(rule, &path, out);
    }
}

/// Returns (index, normalised pattern) of the valid, non-duplicate hosts.
fn check_hosts(rule: &EgressRule, path: &FieldPath, out: &mut Problems) -> Vec<(usize, String)> {
    if rule.hosts.is_empty() {
        out.push(
            path.key("hosts"),
            "empty host list: the rule would match nothing; list at least one host \
             (`api.example.com` or `*.example.com`)",
        );
    }
    let mut seen: Vec<(usize, String)> = Vec::new();
    for (h, raw) in rule.hosts.iter().enumerate() {
        match host::parse_pattern(raw) {
            Err(why) => out.push(path.key("hosts").index(h), why),
            Ok(pattern) => {
                let normal = pattern.to_pattern_string();
                if let Some((first, _)) = seen.iter().find(|(_, n)| *n == normal) {
                    out.push(
                        path.key("hosts").index(h),
                        format!("duplicate host `{raw}` (same as hosts[{first}] once normalised); remove it"),
                    );
                } else {
                    seen.push((h, normal));
                }
            }
        }
    }
    seen
}

/// Returns the valid, non-duplicate ports.
fn check_ports(rule: &EgressRule, path: &FieldPath, out: &mut Problems) -> Vec<u16> {
    if rule.ports.is_empty() {
        out.push(
            path.key("ports"),
            "empty port list: the rule would match nothing; list the ports (`[443]`)",
        );
    }
    let mut seen: Vec<u16> = Vec::new();
    for (p, &port) in rule.ports.iter().enumerate() {
        match u16::try_from(port) {
            Ok(port) if port != 0 => {
                if seen.contains(&port) {
                    out.push(
                        path.key("ports").index(p),
                        format!("duplicate port {port}; remove it"),
                    );
                } else {
                    seen.push(port);
                }
            }
            _ => out.push(
                path.key("ports").index(p),
                format!("port {port} is out of range; ports are 1-65535"),
            ),
        }
    }
    seen
}

fn check_modes(policy: &Policy, rule: &EgressRule, path: &FieldPath, out: &mut Problems) {
    let passthrough = effective_tls(rule) == TlsMode::Passthrough;
    if passthrough && rule.http.is_some() {
        out.push(
            path.key("http"),
            "http rules need `tls: inspect`: with `tls: passthrough` the sidecar cannot see \
             requests; remove `tls: passthrough` or the http rules",
        );
    }
    if let Some(name) = &rule.credential {
        if passthrough {
            out.push(
                path.key("credential"),
                "a credential needs `tls: inspect`: with `tls: passthrough` the sidecar cannot \
                 add headers; remove `tls: passthrough` or the credential",
            );
        }
        if !policy.spec.credentials.contains_key(name) {
            let defined: Vec<&str> = policy.spec.credentials.keys().map(String::as_str).collect();
            out.push(
                path.key("credential"),
                format!(
                    "credential `{name}` is not defined in spec.credentials (defined: {}); \
                     define it there or fix the name",
                    if defined.is_empty() {
                        "none".to_owned()
                    } else {
                        defined.join(", ")
                    }
                ),
            );
        }
    }
    if rule.opaque_tcp && (rule.http.is_some() || rule.credential.is_some()) {
        out.push(
            path.key("opaqueTcp"),
            "opaqueTcp cannot be combined with http rules or a credential: opaque connections \
             carry no requests to check or to add a credential to, so they would bypass them; \
             put the opaque traffic in its own rule",
        );
    }
}

fn check_cidrs(rule: &EgressRule, path: &FieldPath, out: &mut Problems) {
    let mut seen = Vec::new();
    for (c, net) in rule.allowed_cidrs.iter().enumerate() {
        let at = path.key("allowedCidrs").index(c);
        if let Some(why) = addr::cidr_problem(*net) {
            out.push(at, why);
        } else {
            let canonical = addr::canonical_net(*net);
            if seen.contains(&canonical) {
                out.push(at, format!("duplicate CIDR `{net}`; remove it"));
            } else {
                seen.push(canonical);
            }
        }
    }
}
