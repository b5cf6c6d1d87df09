//! Matcher tests: hosts (exact, wildcard, case, trailing dot, IDNA, IP
//! literals), ports, request rules (deny before allow, methods, paths,
//! queries, presets) and the address fence.

use std::net::IpAddr;

use super::*;
use crate::decision::DenyReason;
use crate::parse_policy;

const POLICY: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {name: test}
spec:
  egress:
    - name: api
      hosts: [api.example.com]
      ports: [443]
      credential: tok
      http:
        allow:
          - methods: [GET]
            path: /repos/**
          - methods: [POST]
            path: /repos/*/issues
          - methods: [GET]
            path: /search
            query: {q: "*", page: "[0-9]*"}
          - path: /ref
            query: {ref: main}
        deny:
          - path: /repos/*/secrets/**
          - methods: [DELETE]
          - query: {force: "*"}
    - name: cdn
      hosts: ["*.cdn.example.com", "Bücher.example", "static.example.org."]
      ports: [443, 80]
    - name: api-ssh
      hosts: ["*.example.com"]
      ports: [22]
      opaqueTcp: true
    - name: ro
      hosts: [ro.example.net]
      ports: [443]
      http: {access: read-only}
    - name: rw
      hosts: [rw.example.net]
      ports: [443]
      http: {access: read-write, deny: [{path: /admin/**}]}
    - name: full
      hosts: [full.example.net]
      ports: [443]
      http: {access: full}
    - name: internal
      hosts: [db.internal.example.net, 10.1.2.3, "fd00::5"]
      ports: [5432]
      allowedCidrs: [10.9.0.0/16, "::ffff:192.168.7.0/120"]
    - name: plain
      hosts: [198.18.0.7, "2001:db8::7"]
      ports: [8080]
  credentials:
    tok:
      from: {env: TOKEN}
"#;

fn compiled() -> CompiledPolicy {
    CompiledPolicy::compile(&parse_policy(POLICY.as_bytes()).unwrap())
}

fn conn(p: &CompiledPolicy, host: &str, port: u16) -> Result<String, (Option<String>, DenyReason)> {
    match p.match_connection(host, port) {
        (Decision::Allow { rule, detail }, Some(id)) => {
            assert_eq!(detail, None);
            assert_eq!(p.rule(id).name(), rule);
            Ok(rule.to_owned())
        }
        (Decision::Deny { rule, reason, .. }, None) => Err((rule.map(str::to_owned), reason)),
        other => panic!("allow must come with a rule id and deny without: {other:?}"),
    }
}

fn allowed(p: &CompiledPolicy, host: &str, port: u16) -> Option<String> {
    conn(p, host, port).ok()
}

fn request<'a>(
    p: &'a CompiledPolicy,
    host: &str,
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Decision<'a> {
    let (_, id) = p.match_connection(host, 443);
    let id = id.unwrap_or_else(|| panic!("{host} must be allowed on 443"));
    p.match_request(id, method, path, query)
}

fn allow(rule: &'static str, detail: &'static str) -> Decision<'static> {
    Decision::Allow {
        rule,
        detail: Some(detail),
    }
}

fn denied_by(rule: &'static str, detail: &'static str) -> Decision<'static> {
    Decision::Deny {
        rule: Some(rule),
        detail: Some(detail),
        reason: DenyReason::DeniedByRule,
    }
}

fn no_http_match(rule: &'static str) -> Decision<'static> {
    Decision::Deny {
        rule: Some(rule),
        detail: None,
        reason: DenyReason::NoMatchingHttpRule,
    }
}

#[test]
fn exact_hosts_case_and_trailing_dot() {
    let p = compiled();
    assert_eq!(allowed(&p, "api.example.com", 443).as_deref(), Some("api"));
    assert_eq!(allowed(&p, "API.Example.COM", 443).as_deref(), Some("api"));
    assert_eq!(allowed(&p, "api.example.com.", 443).as_deref(), Some("api"));
    assert_eq!(
        allowed(&p, "static.example.org", 80).as_deref(),
        Some("cdn"),
        "policy trailing dot ignored"
    );
    assert_eq!(allowed(&p, "api.example.com..", 443), None);
    assert_eq!(allowed(&p, "xapi.example.com", 443), None);
    assert_eq!(allowed(&p, "api.example.co", 443), None);
    assert_eq!(
        conn(&p, "nothing.test", 443),
        Err((None, DenyReason::NoMatchingRule))
    );
    assert_eq!(conn(&p, "", 443), Err((None, DenyReason::NoMatchingRule)));
}

#[test]
fn wildcard_matches_exactly_one_leading_label() {
    let p = compiled();
    assert_eq!(
        allowed(&p, "a.cdn.example.com", 443).as_deref(),
        Some("cdn")
    );
    assert_eq!(
        allowed(&p, "A-1.CDN.example.com.", 80).as_deref(),
        Some("cdn")
    );
    assert_eq!(
        allowed(&p, "cdn.example.com", 443),
        None,
        "the parent itself is not matched"
    );
    assert_eq!(
        allowed(&p, "a.b.cdn.example.com", 443),
        None,
        "two labels are not matched"
    );
    assert_eq!(
        allowed(&p, ".cdn.example.com", 443),
        None,
        "empty label is not matched"
    );
}

#[test]
fn exact_beats_wildcard_and_rules_are_found_by_port() {
    let p = compiled();
    // api.example.com is named exactly on 443 and by `*.example.com` on 22.
    assert_eq!(allowed(&p, "api.example.com", 443).as_deref(), Some("api"));
    assert_eq!(
        allowed(&p, "api.example.com", 22).as_deref(),
        Some("api-ssh")
    );
    assert_eq!(
        allowed(&p, "other.example.com", 22).as_deref(),
        Some("api-ssh")
    );
}

#[test]
fn port_mismatch_names_the_rule() {
    let p = compiled();
    assert_eq!(
        conn(&p, "api.example.com", 80),
        Err((Some("api".into()), DenyReason::PortNotAllowed))
    );
    assert_eq!(
        conn(&p, "x.cdn.example.com", 8443),
        Err((Some("cdn".into()), DenyReason::PortNotAllowed))
    );
    assert_eq!(
        conn(&p, "other.example.com", 443),
        Err((Some("api-ssh".into()), DenyReason::PortNotAllowed))
    );
}

#[test]
fn idna_hosts_compare_in_punycode() {
    let p = compiled();
    assert_eq!(allowed(&p, "bücher.example", 443).as_deref(), Some("cdn"));
    assert_eq!(allowed(&p, "BÜCHER.example.", 443).as_deref(), Some("cdn"));
    assert_eq!(
        allowed(&p, "xn--bcher-kva.example", 443).as_deref(),
        Some("cdn")
    );
    assert_eq!(allowed(&p, "bucher.example", 443), None);
    assert!(p.name_allowed("bücher.example"));
}

#[test]
fn ip_literal_hosts() {
    let p = compiled();
    assert_eq!(allowed(&p, "198.18.0.7", 8080).as_deref(), Some("plain"));
    assert_eq!(allowed(&p, "2001:DB8:0::7", 8080).as_deref(), Some("plain"));
    assert_eq!(allowed(&p, "[2001:db8::7]", 8080).as_deref(), Some("plain"));
    assert_eq!(allowed(&p, "198.18.0.8", 8080), None);
}

#[test]
fn dns_names() {
    let p = compiled();
    assert!(p.name_allowed("api.example.com"));
    assert!(p.name_allowed("API.example.com."));
    assert!(p.name_allowed("x.cdn.example.com"));
    assert!(
        p.name_allowed("anything.example.com"),
        "named by *.example.com on port 22"
    );
    assert!(!p.name_allowed("example.com"));
    assert!(!p.name_allowed("a.b.cdn.example.com"));
    assert!(!p.name_allowed("evil.test"));
}

#[test]
fn rule_properties() {
    let p = compiled();
    let rule = |h: &str, port| p.rule(p.match_connection(h, port).1.unwrap());
    let api = rule("api.example.com", 443);
    assert_eq!(
        api.tls_mode(),
        TlsMode::Inspect,
        "credential implies inspect"
    );
    assert!(api.needs_l7());
    assert_eq!(api.credential(), Some("tok"));
    assert!(p.credential("tok").is_some());
    let cdn = rule("a.cdn.example.com", 443);
    assert_eq!(cdn.tls_mode(), TlsMode::Passthrough);
    assert!(!cdn.needs_l7());
    assert!(!cdn.opaque_tcp());
    assert_eq!(cdn.ports(), &[80, 443]);
    assert!(rule("a.example.com", 22).opaque_tcp());
    assert_eq!(
        rule("ro.example.net", 443).tls_mode(),
        TlsMode::Inspect,
        "http implies inspect"
    );
    // Unknown ids do not panic and allow nothing.
    let unknown = p.rule(RuleId(999));
    assert_eq!(unknown.name(), "none");
    assert!(!unknown.allows_address("8.8.8.8".parse().unwrap()));
    assert!(!p.match_request(RuleId(999), "GET", "/", None).is_allow());
}

#[test]
fn inspected_hosts_are_the_l7_rules() {
    let p = compiled();
    let hosts: Vec<&str> = p.inspected_hosts().collect();
    assert_eq!(
        hosts,
        [
            "api.example.com",
            "ro.example.net",
            "rw.example.net",
            "full.example.net"
        ]
    );
}

#[test]
fn requests_deny_before_allow() {
    let p = compiled();
    let h = "api.example.com";
    assert_eq!(
        request(&p, h, "GET", "/repos/a/b", None),
        allow("api", "allow[0]")
    );
    assert_eq!(
        request(&p, h, "GET", "/repos/a/secrets/x", None),
        denied_by("api", "deny[0]")
    );
    assert_eq!(
        request(&p, h, "GET", "/repos/a/secrets", None),
        denied_by("api", "deny[0]"),
        "** matches zero segments"
    );
    assert_eq!(
        request(&p, h, "DELETE", "/repos/a/b", None),
        denied_by("api", "deny[1]")
    );
    assert_eq!(
        request(&p, h, "delete", "/repos/a/b", None),
        denied_by("api", "deny[1]"),
        "deny methods ignore case"
    );
    assert_eq!(
        request(&p, h, "get", "/repos/a/b", None),
        no_http_match("api"),
        "allow methods are exact"
    );
    assert_eq!(
        request(&p, h, "GET", "/repos/a/b", Some("force=1")),
        denied_by("api", "deny[2]")
    );
    assert_eq!(
        request(&p, h, "GET", "/repos/a/b", Some("x=1&%66orce=")),
        denied_by("api", "deny[2]"),
        "encoded keys are decoded"
    );
    assert_eq!(
        request(&p, h, "POST", "/repos/x/issues", None),
        allow("api", "allow[1]")
    );
    assert_eq!(
        request(&p, h, "POST", "/repos/x/y/issues", None),
        no_http_match("api"),
        "* stays in one segment"
    );
    assert_eq!(
        request(&p, h, "PUT", "/repos/x/issues", None),
        no_http_match("api")
    );
    assert_eq!(request(&p, h, "GET", "/", None), no_http_match("api"));
    assert_eq!(request(&p, h, "GET", "", None), no_http_match("api"));
}

#[test]
fn query_matching() {
    let p = compiled();
    let h = "api.example.com";
    // allow[2]: q present (any value) and page matching the literal glob `[0-9]*`.
    assert_eq!(
        request(&p, h, "GET", "/search", Some("q=x&page=[0-9]7")),
        allow("api", "allow[2]")
    );
    assert_eq!(
        request(&p, h, "GET", "/search", Some("page=[0-9]&q=")),
        allow("api", "allow[2]"),
        "empty value is present"
    );
    assert_eq!(
        request(&p, h, "GET", "/search", Some("page=[0-9]")),
        no_http_match("api"),
        "q missing"
    );
    assert_eq!(request(&p, h, "GET", "/search", None), no_http_match("api"));
    assert_eq!(
        request(&p, h, "GET", "/search", Some("q&page=[0-9]")),
        allow("api", "allow[2]"),
        "key without = is present"
    );
    // allow[3]: every occurrence of ref must match.
    assert_eq!(
        request(&p, h, "GET", "/ref", Some("ref=main")),
        allow("api", "allow[3]")
    );
    assert_eq!(
        request(&p, h, "GET", "/ref", Some("ref=%6Dain")),
        allow("api", "allow[3]")
    );
    assert_eq!(
        request(&p, h, "GET", "/ref", Some("ref=main&ref=evil")),
        no_http_match("api")
    );
    assert_eq!(
        request(&p, h, "GET", "/ref", Some("ref=mainx")),
        no_http_match("api")
    );
    assert_eq!(
        request(&p, h, "PATCH", "/ref", Some("ref=main")),
        allow("api", "allow[3]"),
        "no methods = any method"
    );
}

#[test]
fn presets() {
    let p = compiled();
    for m in ["GET", "HEAD", "OPTIONS"] {
        assert_eq!(
            request(&p, "ro.example.net", m, "/x", None),
            allow("ro", "access:read-only")
        );
        assert_eq!(
            request(&p, "rw.example.net", m, "/x", None),
            allow("rw", "access:read-write")
        );
    }
    for m in ["POST", "PUT", "PATCH"] {
        assert_eq!(
            request(&p, "ro.example.net", m, "/x", None),
            no_http_match("ro")
        );
        assert_eq!(
            request(&p, "rw.example.net", m, "/x", None),
            allow("rw", "access:read-write")
        );
    }
    for m in ["DELETE", "CONNECT", "TRACE", "PROPFIND"] {
        assert_eq!(
            request(&p, "rw.example.net", m, "/x", None),
            no_http_match("rw")
        );
        assert_eq!(
            request(&p, "full.example.net", m, "/x", None),
            allow("full", "access:full")
        );
    }
    assert_eq!(
        request(&p, "rw.example.net", "GET", "/admin/users", None),
        denied_by("rw", "deny[0]")
    );
}

#[test]
fn rule_without_http_allows_every_request() {
    let p = compiled();
    let (_, id) = p.match_connection("a.cdn.example.com", 443);
    assert_eq!(
        p.match_request(id.unwrap(), "DELETE", "/anything", Some("x=1")),
        Decision::Allow {
            rule: "cdn",
            detail: None
        }
    );
}

#[test]
fn address_fence() {
    let p = compiled();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let cdn = p.rule(p.match_connection("a.cdn.example.com", 443).1.unwrap());
    let internal = p.rule(
        p.match_connection("db.internal.example.net", 5432)
            .1
            .unwrap(),
    );
    for public in ["8.8.8.8", "198.18.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
        assert!(cdn.allows_address(ip(public)), "{public}");
    }
    for never in [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
        "::ffff:127.0.0.1",
    ] {
        assert!(!cdn.allows_address(ip(never)), "{never}");
        assert!(!internal.allows_address(ip(never)), "{never}");
    }
    for private in [
        "10.9.1.1",
        "192.168.7.9",
        "::ffff:10.9.0.1",
        "10.1.2.3",
        "fd00::5",
    ] {
        assert!(
            !cdn.allows_address(ip(private)),
            "{private} needs allowedCidrs"
        );
        assert!(
            internal.allows_address(ip(private)),
            "{private} is named by the rule"
        );
    }
    for other_private in [
        "10.10.0.1",
        "192.168.8.1",
        "172.16.0.1",
        "100.64.0.1",
        "fd00::6",
    ] {
        assert!(
            !internal.allows_address(ip(other_private)),
            "{other_private}"
        );
    }
}

#[test]
fn deny_all_policy() {
    let p = CompiledPolicy::compile(
        &parse_policy(b"apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata: {name: x}\nspec: {denyAll: true}\n").unwrap(),
    );
    assert!(p.deny_all());
    assert_eq!(
        p.match_connection("example.com", 443),
        (
            Decision::Deny {
                rule: None,
                detail: None,
                reason: DenyReason::DenyAll
            },
            None
        )
    );
    assert!(!p.name_allowed("example.com"));
    assert_eq!(p.inspected_hosts().count(), 0);
}

#[test]
fn mode_and_dns_are_exposed() {
    let p = compiled();
    assert_eq!(p.name(), "test");
    assert_eq!(p.mode(), Mode::Enforce);
    assert_eq!(p.dns_mode(), DnsMode::Policy);
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledPolicy>();
    assert_send_sync::<CompiledRule>();
}

#[test]
fn hosts_are_given_without_port() {
    let p = compiled();
    assert_eq!(
        allowed(&p, "api.example.com:443", 443),
        None,
        "the caller strips the port"
    );
}

#[test]
fn method_overrides_never_widen_the_rule() {
    let p = compiled();
    let (_, id) = p.match_connection("api.example.com", 443);
    let id = id.unwrap();
    let with = |method: &str, overrides: &[&str], path: &str| {
        p.match_request_methods(id, method, overrides, path, None)
    };
    // No override: the same as match_request.
    assert_eq!(with("GET", &[], "/repos/a/b"), allow("api", "allow[0]"));
    // Allowed real method, allowed override: the real method's allow.
    assert_eq!(
        with("POST", &["POST"], "/repos/a/issues"),
        allow("api", "allow[1]")
    );
    // An override the allow rules do not cover is refused even though GET is allowed.
    assert_eq!(with("GET", &["POST"], "/repos/a/b"), no_http_match("api"));
    // A denied override (deny rules compare case-insensitively) is refused.
    assert_eq!(
        with("GET", &["delete"], "/repos/a/b"),
        denied_by("api", "deny[1]")
    );
    assert_eq!(
        with("GET", &["GET", "DELETE"], "/repos/a/b"),
        denied_by("api", "deny[1]")
    );
    // The real method is judged first: a denied real method stays denied.
    assert_eq!(
        with("DELETE", &["GET"], "/repos/a/b"),
        denied_by("api", "deny[1]")
    );
    // Presets: read-only refuses a PUT override on a GET.
    let (_, ro) = p.match_connection("ro.example.net", 443);
    let ro = ro.unwrap();
    assert!(
        p.match_request_methods(ro, "GET", &["HEAD"], "/x", None)
            .is_allow()
    );
    assert_eq!(
        p.match_request_methods(ro, "GET", &["PUT"], "/x", None),
        no_http_match("ro")
    );
    // A rule without `http` allows every method, overrides included.
    let (_, cdn) = p.match_connection("a.cdn.example.com", 443);
    assert!(
        p.match_request_methods(cdn.unwrap(), "GET", &["DELETE"], "/", None)
            .is_allow()
    );
}
