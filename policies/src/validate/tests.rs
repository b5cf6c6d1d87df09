//! One test per validation rule. Each builds a document that is valid except
//! for the one thing the rule is about, so removing the rule makes the test
//! fail; the `base_*` tests prove the starting points are valid.

use crate::{MAX_POLICY_BYTES, parse_policy};

const HEAD: &str = "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: base\n";

/// A document with these egress rules (YAML list items, indented by 4) and
/// optional credentials (YAML mapping entries, indented by 4).
fn doc(rules: &str, credentials: &str) -> String {
    let mut d = format!("{HEAD}spec:\n  egress:\n{rules}");
    if !credentials.is_empty() {
        d.push_str("  credentials:\n");
        d.push_str(credentials);
    }
    d
}

/// One rule named `r` for `api.example.com:443` plus extra YAML lines.
fn rule(extra: &str) -> String {
    format!("    - name: r\n      hosts: [api.example.com]\n      ports: [443]\n{extra}")
}

/// A credential `c` read from an env variable, plus extra lines under it.
const CRED: &str = "    c:\n      from: {env: TOKEN}\n";

/// All errors rendered as `line:col: path: message`, one per line.
fn errors(text: &str) -> String {
    match parse_policy(text.as_bytes()) {
        Ok(_) => panic!("expected errors, but the document is valid:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn rejects(text: &str, path: &str, needle: &str) {
    let all = errors(text);
    let hit = all
        .lines()
        .any(|l| l.contains(&format!("{path}: ")) && l.contains(needle));
    assert!(
        hit,
        "expected `{path}: ...{needle}...` among:\n{all}\n--- document:\n{text}"
    );
}

#[track_caller]
fn accepts(text: &str) {
    if let Err(e) = parse_policy(text.as_bytes()) {
        panic!("expected a valid document, got:\n{e}\n--- document:\n{text}");
    }
}

#[test]
fn base_documents_are_valid() {
    accepts(&doc(&rule(""), ""));
    accepts(&doc(&rule("      credential: c\n"), CRED));
    accepts(&doc(&rule("      http: {access: read-only}\n"), ""));
}

// ---- the document as a whole -------------------------------------------

#[test]
fn too_large() {
    let mut big = doc(&rule(""), "");
    big.push('#');
    big.push_str(&"x".repeat(MAX_POLICY_BYTES));
    rejects(&big, "(document)", "the limit is 1048576 bytes");
}

#[test]
fn not_utf8() {
    let mut bytes = doc(&rule(""), "").into_bytes();
    bytes.extend_from_slice(b"# \xff\xfe\n");
    let e = parse_policy(&bytes).unwrap_err().to_string();
    assert!(e.contains("(document): policy is not valid UTF-8"), "{e}");
    assert!(e.starts_with("10:3:"), "the position of the bad byte: {e}");
}

#[test]
fn malformed_yaml() {
    rejects(
        &doc("    - name: r\n      hosts: [a.example.com\n", ""),
        "(document)",
        "invalid YAML",
    );
}

#[test]
fn empty_document() {
    rejects("", "(document)", "policy document is empty");
    rejects("# nothing\n\n", "(document)", "policy document is empty");
}

#[test]
fn multiple_documents() {
    rejects(
        &format!("{}---\n{}", doc(&rule(""), ""), doc(&rule(""), "")),
        "(document)",
        "exactly one YAML document",
    );
}

#[test]
fn top_level_not_a_mapping() {
    rejects("[1, 2]\n", "(document)", "a policy is a mapping");
}

#[test]
fn too_deep() {
    let deep = format!(
        "{HEAD}spec:\n  egress: {}{}\n",
        "[".repeat(40),
        "]".repeat(40)
    );
    rejects(&deep, "[0][0]", "nests deeper than 16 levels");
    assert!(errors(&deep).contains(": spec.egress[0]"));
}

#[test]
fn deep_nesting_never_overflows_the_stack() {
    // Refused by the bracket cap before the YAML scanner sees it (its cost
    // grows with the square of the flow depth).
    let deep = format!("a: {}{}\n", "[".repeat(200_000), "]".repeat(200_000));
    assert!(errors(&deep).contains("more than 8192 `[` and `{` characters"));
    let deep = format!("a: {}1{}\n", "{a: ".repeat(50_000), "}".repeat(50_000));
    assert!(errors(&deep).contains("more than 8192"));
    // Just under the cap: refused by the guard pass.
    let deep = format!("a: {}{}\n", "[".repeat(8000), "]".repeat(8000));
    assert!(errors(&deep).contains("nests deeper than 16"));
    // Block nesting is bounded by the guard pass too.
    let mut block = String::new();
    for i in 0..40 {
        block.push_str(&format!("{}k:\n", "  ".repeat(i)));
    }
    assert!(errors(&block).contains("nests deeper than 16"));
}

#[test]
fn alias_bomb() {
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10u8 {
        let (name, prev) = ((b'a' + i) as char, (b'a' + i - 1) as char);
        bomb.push_str(&format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    rejects(&bomb, "", "more than 100000 values");
}

#[test]
fn aliases_that_stay_small_are_fine() {
    accepts(&format!(
        "{HEAD}spec:\n  egress:\n    - name: a\n      hosts: [a.example.com]\n      ports: &p [443, 8443]\n    - name: b\n      hosts: [b.example.com]\n      ports: *p\n"
    ));
}

#[test]
fn unknown_field() {
    rejects(
        &doc(&rule("      hostz: [x]\n"), ""),
        "spec.egress[0].hostz",
        "unknown field `hostz`, expected one of",
    );
    rejects(
        &format!("{HEAD}spec:\n  egress: []\n  denyAll: true\n  extra: 1\n"),
        "spec.extra",
        "unknown field",
    );
}

#[test]
fn wrong_type() {
    rejects(
        &doc(
            "    - name: r\n      hosts: [a.example.com]\n      ports: \"443\"\n",
            "",
        ),
        "spec.egress[0].ports",
        "expected a sequence",
    );
    rejects(
        &doc(&rule("      opaqueTcp: yes\n"), ""),
        "spec.egress[0].opaqueTcp",
        "write `true` or `false`",
    );
    rejects(
        &doc(&rule("      tls: Inspect\n"), ""),
        "spec.egress[0].tls",
        "expected `inspect` or `passthrough`",
    );
    rejects(
        &doc(
            "    - name: r\n      hosts: [a.example.com]\n      ports: [-1]\n",
            "",
        ),
        "spec.egress[0].ports[0]",
        "ports are integers 1-65535",
    );
    rejects(
        &doc(&rule("      allowedCidrs: [10.0.0.0/33]\n"), ""),
        "spec.egress[0].allowedCidrs[0]",
        "write CIDRs such as",
    );
}

#[test]
fn missing_field() {
    rejects(
        &doc("    - name: r\n      hosts: [a.example.com]\n", ""),
        "spec.egress[0]",
        "missing field `ports`",
    );
}

#[test]
fn unknown_credential_source() {
    rejects(
        &doc(
            &rule("      credential: c\n"),
            "    c:\n      from: {vault: x}\n",
        ),
        "spec.credentials.c.from.vault",
        "unknown variant `vault`",
    );
}

// ---- document header -----------------------------------------------------

#[test]
fn api_version() {
    rejects(
        &doc(&rule(""), "").replace("v1alpha1", "v1"),
        "apiVersion",
        "must be `palisade.dev/v1alpha1`",
    );
}

#[test]
fn kind() {
    rejects(
        &doc(&rule(""), "").replace("kind: Policy", "kind: NetworkPolicy"),
        "kind",
        "must be `Policy`",
    );
}

#[test]
fn metadata_name() {
    rejects(
        &doc(&rule(""), "").replace("name: base", "name: Base_1"),
        "metadata.name",
        "policy name `Base_1` is invalid",
    );
}

#[test]
fn labels() {
    let with = |labels: &str| {
        doc(&rule(""), "").replace(
            "  name: base\n",
            &format!("  name: base\n  labels: {labels}\n"),
        )
    };
    accepts(&with("{team: platform, example.com/owner: a.b}"));
    rejects(
        &with("{\"bad key\": x}"),
        "metadata.labels.bad key",
        "label key `bad key` is invalid",
    );
    rejects(
        &with("{team: \"-x\"}"),
        "metadata.labels.team",
        "label value `-x` is invalid",
    );
}

// ---- deny-all and allow-all by accident ----------------------------------

#[test]
fn empty_egress_without_deny_all() {
    rejects(
        &format!("{HEAD}spec:\n  egress: []\n"),
        "spec.egress",
        "no egress rules",
    );
    rejects(
        &format!("{HEAD}spec: {{}}\n"),
        "spec.egress",
        "set `denyAll: true`",
    );
    accepts(&format!("{HEAD}spec:\n  denyAll: true\n"));
}

#[test]
fn deny_all_with_rules() {
    rejects(
        &format!("{HEAD}spec:\n  denyAll: true\n  egress:\n{}", rule("")),
        "spec.denyAll",
        "denyAll is true but 1 egress rule(s)",
    );
}

// ---- rule names ----------------------------------------------------------

#[test]
fn rule_name_invalid() {
    rejects(
        &doc(&rule("").replace("name: r", "name: My Rule"), ""),
        "spec.egress[0].name",
        "rule name `My Rule` is invalid",
    );
}

#[test]
fn rule_name_duplicate() {
    let two = format!(
        "{}{}",
        rule(""),
        rule("").replace("api.example.com", "b.example.com")
    );
    rejects(
        &doc(&two, ""),
        "spec.egress[1].name",
        "duplicate rule name `r` (first used by spec.egress[0])",
    );
}

// ---- hosts -----------------------------------------------------------------

fn host_doc(hosts: &str) -> String {
    doc(
        &format!("    - name: r\n      hosts: {hosts}\n      ports: [443]\n"),
        "",
    )
}

#[test]
fn hosts_empty() {
    rejects(&host_doc("[]"), "spec.egress[0].hosts", "empty host list");
}

#[test]
fn host_bare_star() {
    rejects(
        &host_doc("[\"*\"]"),
        "spec.egress[0].hosts[0]",
        "would match every name",
    );
}

#[test]
fn host_tld_wildcard() {
    rejects(
        &host_doc("[a.example.com, \"*.com\"]"),
        "spec.egress[0].hosts[1]",
        "wildcard over the top-level domain `com`",
    );
    accepts(&host_doc("[\"*.example.com\"]"));
}

#[test]
fn host_wildcard_position() {
    rejects(
        &host_doc("[\"a.*.com\"]"),
        "spec.egress[0].hosts[0]",
        "not the whole first label",
    );
    rejects(
        &host_doc("[\"*foo.com\"]"),
        "spec.egress[0].hosts[0]",
        "not the whole first label",
    );
    rejects(
        &host_doc("[\"foo.*\"]"),
        "spec.egress[0].hosts[0]",
        "not the whole first label",
    );
}

#[test]
fn host_invalid() {
    rejects(
        &host_doc("[\"exa mple.com\"]"),
        "spec.egress[0].hosts[0]",
        "whitespace",
    );
    rejects(
        &host_doc("[\"a..example.com\"]"),
        "spec.egress[0].hosts[0]",
        "empty label",
    );
    rejects(
        &host_doc("[\"https://example.com\"]"),
        "spec.egress[0].hosts[0]",
        "contains `:`",
    );
    rejects(
        &host_doc("[\"-a.example.com\"]"),
        "spec.egress[0].hosts[0]",
        "starting or ending with `-`",
    );
    rejects(
        &host_doc(&format!("[{}.example.com]", "a".repeat(64))),
        "spec.egress[0].hosts[0]",
        "label of 64 bytes",
    );
    rejects(
        &host_doc("[\"1.2.3\"]"),
        "spec.egress[0].hosts[0]",
        "all-numeric",
    );
    rejects(&host_doc("[\"\"]"), "spec.egress[0].hosts[0]", "empty host");
}

#[test]
fn host_forbidden_address() {
    rejects(
        &host_doc("[127.0.0.1]"),
        "spec.egress[0].hosts[0]",
        "never dialled",
    );
    rejects(
        &host_doc("[169.254.169.254]"),
        "spec.egress[0].hosts[0]",
        "never dialled",
    );
    rejects(
        &host_doc("[\"::1\"]"),
        "spec.egress[0].hosts[0]",
        "never dialled",
    );
    accepts(&host_doc("[198.18.0.7, \"2001:db8::7\", 10.0.0.1]"));
}

#[test]
fn host_duplicate() {
    rejects(
        &host_doc("[a.example.com, A.Example.com.]"),
        "spec.egress[0].hosts[1]",
        "duplicate host `A.Example.com.`",
    );
}

#[test]
fn host_and_port_claimed_twice() {
    let two = format!(
        "{}{}",
        rule(""),
        rule("")
            .replace("name: r", "name: s")
            .replace("[api.example.com]", "[b.example.com, API.example.com]")
    );
    rejects(
        &doc(&two, ""),
        "spec.egress[1].hosts[1]",
        "host `api.example.com` on port 443 is already matched by rule `r`",
    );
    // Same host on other ports, or an exact host under a wildcard, is fine.
    let ok = format!(
        "{}{}",
        rule(""),
        rule("")
            .replace("name: r", "name: s")
            .replace("[443]", "[80]")
    );
    accepts(&doc(&ok, ""));
    let ok = format!(
        "{}{}",
        rule(""),
        rule("")
            .replace("name: r", "name: s")
            .replace("[api.example.com]", "[\"*.example.com\"]")
    );
    accepts(&doc(&ok, ""));
}

// ---- ports ---------------------------------------------------------------

fn ports_doc(ports: &str) -> String {
    doc(
        &format!("    - name: r\n      hosts: [a.example.com]\n      ports: {ports}\n"),
        "",
    )
}

#[test]
fn ports_empty() {
    rejects(&ports_doc("[]"), "spec.egress[0].ports", "empty port list");
}

#[test]
fn port_out_of_range() {
    rejects(
        &ports_doc("[0]"),
        "spec.egress[0].ports[0]",
        "port 0 is out of range",
    );
    rejects(
        &ports_doc("[443, 65536]"),
        "spec.egress[0].ports[1]",
        "port 65536 is out of range",
    );
    accepts(&ports_doc("[1, 65535]"));
}

#[test]
fn port_duplicate() {
    rejects(
        &ports_doc("[443, 443]"),
        "spec.egress[0].ports[1]",
        "duplicate port 443",
    );
}

// ---- TLS, HTTP, credential, opaque TCP combinations -------------------------

#[test]
fn http_on_passthrough() {
    rejects(
        &doc(
            &rule("      tls: passthrough\n      http: {access: read-only}\n"),
            "",
        ),
        "spec.egress[0].http",
        "http rules need `tls: inspect`",
    );
}

#[test]
fn credential_on_passthrough() {
    rejects(
        &doc(&rule("      tls: passthrough\n      credential: c\n"), CRED),
        "spec.egress[0].credential",
        "a credential needs `tls: inspect`",
    );
}

#[test]
fn credential_undefined() {
    rejects(
        &doc(&rule("      credential: nope\n"), CRED),
        "spec.egress[0].credential",
        "credential `nope` is not defined in spec.credentials (defined: c)",
    );
}

#[test]
fn credential_unused() {
    rejects(
        &doc(&rule(""), CRED),
        "spec.credentials.c",
        "credential `c` is defined but no egress rule uses it",
    );
}

#[test]
fn credential_name_invalid() {
    rejects(
        &doc(
            &rule("      credential: Bad_Cred\n"),
            "    Bad_Cred:\n      from: {env: TOKEN}\n",
        ),
        "spec.credentials.Bad_Cred",
        "credential name `Bad_Cred` is invalid",
    );
}

#[test]
fn opaque_tcp_with_l7() {
    rejects(
        &doc(
            &rule("      opaqueTcp: true\n      http: {access: full}\n"),
            "",
        ),
        "spec.egress[0].opaqueTcp",
        "opaqueTcp cannot be combined",
    );
    rejects(
        &doc(&rule("      opaqueTcp: true\n      credential: c\n"), CRED),
        "spec.egress[0].opaqueTcp",
        "opaqueTcp cannot be combined",
    );
    accepts(&doc(&rule("      opaqueTcp: true\n"), ""));
}

// ---- http rules ----------------------------------------------------------

fn http_doc(http: &str) -> String {
    doc(&rule(&format!("      http:\n{http}")), "")
}

#[test]
fn http_without_access_or_allow() {
    rejects(
        &doc(&rule("      http: {}\n"), ""),
        "spec.egress[0].http",
        "need `access` or at least one `allow` rule",
    );
    rejects(
        &http_doc("        deny: [{path: /x}]\n"),
        "spec.egress[0].http",
        "need `access` or at least one `allow` rule",
    );
    rejects(
        &http_doc("        allow: []\n"),
        "spec.egress[0].http",
        "need `access` or at least one `allow` rule",
    );
}

#[test]
fn access_with_allow() {
    rejects(
        &http_doc("        access: read-only\n        allow: [{path: /x}]\n"),
        "spec.egress[0].http",
        "`access` and `allow` cannot be combined",
    );
}

#[test]
fn request_rule_empty() {
    rejects(
        &http_doc("        allow: [{}]\n"),
        "spec.egress[0].http.allow[0]",
        "an empty allow rule would match every request",
    );
    rejects(
        &http_doc("        access: full\n        deny: [{}]\n"),
        "spec.egress[0].http.deny[0]",
        "an empty deny rule",
    );
}

#[test]
fn methods_written_empty() {
    rejects(
        &http_doc("        allow: [{methods: [], path: /x}]\n"),
        "spec.egress[0].http.allow[0].methods",
        "an empty methods list would match every method",
    );
    accepts(&http_doc("        allow: [{path: /x}]\n"));
}

#[test]
fn method_invalid() {
    rejects(
        &http_doc("        allow: [{methods: [get]}]\n"),
        "spec.egress[0].http.allow[0].methods[0]",
        "must be upper-case (`GET`)",
    );
    rejects(
        &http_doc("        allow: [{methods: [\"GET /\"]}]\n"),
        "spec.egress[0].http.allow[0].methods[0]",
        "not an HTTP method token",
    );
    rejects(
        &http_doc("        allow: [{methods: [GET, GET]}]\n"),
        "spec.egress[0].http.allow[0].methods[1]",
        "duplicate method `GET`",
    );
    accepts(&http_doc(
        "        allow: [{methods: [PROPFIND, M-SEARCH]}]\n",
    ));
}

#[test]
fn path_glob_invalid() {
    let at = "spec.egress[0].http.allow[0].path";
    rejects(
        &http_doc("        allow: [{path: repos/**}]\n"),
        at,
        "must start with `/`",
    );
    rejects(
        &http_doc("        allow: [{path: \"*\"}]\n"),
        at,
        "must start with `/`",
    );
    rejects(
        &http_doc("        allow: [{path: /a**/b}]\n"),
        at,
        "`**` must be a whole segment",
    );
    rejects(
        &http_doc("        allow: [{path: \"/a b\"}]\n"),
        at,
        "contains ` `",
    );
    rejects(
        &http_doc("        allow: [{path: \"/a?x=1\"}]\n"),
        at,
        "contains `?`",
    );
    rejects(
        &http_doc("        allow: [{path: /a/../b}]\n"),
        at,
        "has a `..` segment",
    );
    rejects(
        &http_doc("        allow: [{path: /a%2}]\n"),
        at,
        "not followed by two hex digits",
    );
    accepts(&http_doc(
        "        allow: [{path: \"/**/x/*.tar.gz\"}, {path: /}, {path: \"/a%20b/@x:y\"}]\n",
    ));
}

#[test]
fn query_invalid() {
    rejects(
        &http_doc("        allow: [{query: {\"a&b\": x}}]\n"),
        "spec.egress[0].http.allow[0].query.a&b",
        "query parameter name `a&b` is invalid",
    );
    rejects(
        &http_doc("        allow: [{query: {\"\": x}}]\n"),
        "spec.egress[0].http.allow[0].query.",
        "query parameter name `` is invalid",
    );
    rejects(
        &http_doc("        allow: [{query: {a: \"x#y\"}}]\n"),
        "spec.egress[0].http.allow[0].query.a",
        "query value glob `x#y` is invalid",
    );
}

// ---- allowedCidrs -------------------------------------------------------------

#[test]
fn allowed_cidrs_forbidden_ranges() {
    let at = "spec.egress[0].allowedCidrs[0]";
    for (cidr, needle) in [
        ("127.0.0.0/8", "loopback"),
        ("169.254.169.254/32", "link-local"),
        ("0.0.0.0/0", "never dialled"),
        ("\"::/0\"", "never dialled"),
        ("\"::1/128\"", "loopback"),
        ("\"fe80::/10\"", "link-local"),
        ("224.0.0.0/8", "multicast"),
        ("\"::ffff:127.0.0.1/128\"", "loopback"),
    ] {
        rejects(
            &doc(&rule(&format!("      allowedCidrs: [{cidr}]\n")), ""),
            at,
            needle,
        );
    }
}

#[test]
fn allowed_cidrs_must_be_private() {
    let at = "spec.egress[0].allowedCidrs[0]";
    rejects(
        &doc(&rule("      allowedCidrs: [8.8.8.0/24]\n"), ""),
        at,
        "is a public range",
    );
    rejects(
        &doc(&rule("      allowedCidrs: [10.0.0.0/7]\n"), ""),
        at,
        "reaches beyond the private range",
    );
    rejects(
        &doc(&rule("      allowedCidrs: [10.0.0.0/8, 10.0.0.1/8]\n"), ""),
        "spec.egress[0].allowedCidrs[1]",
        "duplicate CIDR",
    );
    accepts(&doc(
        &rule(
            "      allowedCidrs: [10.0.0.0/8, 172.16.0.0/12, 192.168.1.0/24, 100.64.0.0/10, \"fd00::/8\"]\n",
        ),
        "",
    ));
}

// ---- credentials ---------------------------------------------------------------

fn cred_doc(cred: &str) -> String {
    doc(&rule("      credential: c\n"), &format!("    c:\n{cred}"))
}

#[test]
fn injection_header_forbidden() {
    for header in [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Upgrade",
        "TE",
        "Trailer",
        "Proxy-Authorization",
        "Proxy-Connection",
    ] {
        rejects(
            &cred_doc(&format!(
                "      from: {{env: TOKEN}}\n      inject: {{header: {header}}}\n"
            )),
            "spec.credentials.c.inject.header",
            &format!("header `{header}` may not be injected"),
        );
    }
    accepts(&cred_doc(
        "      from: {env: TOKEN}\n      inject: {header: X-Api-Key}\n",
    ));
}

#[test]
fn injection_header_invalid_token() {
    rejects(
        &cred_doc("      from: {env: TOKEN}\n      inject: {header: \"X Api\"}\n"),
        "spec.credentials.c.inject.header",
        "not a valid HTTP header name",
    );
    rejects(
        &cred_doc("      from: {env: TOKEN}\n      inject: {header: \":authority\"}\n"),
        "spec.credentials.c.inject.header",
        "not a valid HTTP header name",
    );
}

#[test]
fn injection_scheme_invalid() {
    rejects(
        &cred_doc("      from: {env: TOKEN}\n      inject: {scheme: \"Bearer x\"}\n"),
        "spec.credentials.c.inject.scheme",
        "scheme `Bearer x` is invalid",
    );
    rejects(
        &cred_doc("      from: {env: TOKEN}\n      inject: {scheme: \"\"}\n"),
        "spec.credentials.c.inject.scheme",
        "is invalid",
    );
}

#[test]
fn secret_source_invalid() {
    rejects(
        &cred_doc("      from: {secret: {name: My_Secret, key: token}}\n"),
        "spec.credentials.c.from.secret.name",
        "secret name `My_Secret` is invalid",
    );
    rejects(
        &cred_doc("      from: {secret: {name: gh, key: \"a/b\"}}\n"),
        "spec.credentials.c.from.secret.key",
        "secret key `a/b` is invalid",
    );
    accepts(&cred_doc(
        "      from: {secret: {name: gh.v1, key: .token_1}}\n",
    ));
}

#[test]
fn file_source_not_absolute() {
    rejects(
        &cred_doc("      from: {file: token.txt}\n"),
        "spec.credentials.c.from.file",
        "must be an absolute path",
    );
}

#[test]
fn env_source_invalid() {
    rejects(
        &cred_doc("      from: {env: 1TOKEN}\n"),
        "spec.credentials.c.from.env",
        "environment variable name `1TOKEN` is invalid",
    );
}

#[test]
fn workload_token_audience_empty() {
    rejects(
        &cred_doc("      from: {workloadToken: {audience: \"\"}}\n"),
        "spec.credentials.c.from.workloadToken.audience",
        "may not be empty",
    );
}

fn grant_doc(endpoint: &str, extra: &str) -> String {
    cred_doc(&format!(
        "      from:\n        tokenGrant:\n          tokenEndpoint: \"{endpoint}\"\n          grant: clientCredentials\n          svidAudience: auth\n{extra}"
    ))
}

#[test]
fn token_endpoint_must_be_https() {
    let at = "spec.credentials.c.from.tokenGrant.tokenEndpoint";
    rejects(
        &grant_doc("http://auth.example.com/token", ""),
        at,
        "uses http; tokens must travel over https",
    );
    rejects(&grant_doc("http://10.0.0.1/token", ""), at, "uses http");
    for ok in [
        "https://auth.example.com/oauth2/token",
        "http://127.0.0.1:8080/token",
        "http://[::1]:8080/token",
        "http://localhost/token",
        "http://auth.identity.svc/token",
        "http://auth.identity.svc.cluster.local:8080/token",
    ] {
        accepts(&grant_doc(ok, ""));
    }
}

#[test]
fn token_endpoint_malformed() {
    let at = "spec.credentials.c.from.tokenGrant.tokenEndpoint";
    rejects(
        &grant_doc("auth.example.com/token", ""),
        at,
        "is not an absolute URL",
    );
    rejects(
        &grant_doc("ftp://auth.example.com/token", ""),
        at,
        "uses the scheme `ftp`",
    );
    rejects(
        &grant_doc("https://user:pw@auth.example.com/token", ""),
        at,
        "carries credentials",
    );
    rejects(
        &grant_doc("https://auth.example.com:0/token", ""),
        at,
        "ports are 1-65535",
    );
    rejects(
        &grant_doc("https://*.example.com/token", ""),
        at,
        "not a wildcard",
    );
    rejects(
        &grant_doc("https://auth.example.com/token#x", ""),
        at,
        "fragment",
    );
    rejects(&grant_doc("https:///token", ""), at, "invalid host");
}

#[test]
fn token_grant_fields() {
    let at = "spec.credentials.c.from.tokenGrant";
    rejects(
        &grant_doc("https://a.example.com/t", "")
            .replace("svidAudience: auth", "svidAudience: \"\""),
        &format!("{at}.svidAudience"),
        "may not be empty",
    );
    rejects(
        &grant_doc("https://a.example.com/t", "          audience: \"a b\"\n"),
        &format!("{at}.audience"),
        "may not be empty or contain whitespace",
    );
    rejects(
        &grant_doc(
            "https://a.example.com/t",
            "          scopes: [read, \"a b\"]\n",
        ),
        &format!("{at}.scopes[1]"),
        "scope `a b` is invalid",
    );
    rejects(
        &grant_doc(
            "https://a.example.com/t",
            "          scopes: [read, read]\n",
        ),
        &format!("{at}.scopes[1]"),
        "duplicate scope",
    );
}

fn override_doc(overrides: &str) -> String {
    grant_doc(
        "https://a.example.com/t",
        &format!("          audience: base\n          overrides:\n{overrides}"),
    )
}

#[test]
fn token_grant_overrides() {
    let at = "spec.credentials.c.from.tokenGrant.overrides";
    accepts(&override_doc(
        "            - {host: api.example.com, audience: orders}\n\
         \x20           - {host: api.example.com, path: /v1, audience: v1}\n\
         \x20           - {host: api.example.com, port: 443, path: /v1/admin, scopes: [admin]}\n",
    ));
    // Port-only and path-only selectors on one host: a request to 443 /v1 matches both.
    rejects(
        &override_doc(
            "            - {host: api.example.com, port: 443, audience: a}\n\
             \x20           - {host: api.example.com, path: /v1, audience: b}\n",
        ),
        &format!("{at}[1]"),
        "overlaps overrides[0]",
    );
    rejects(
        &override_doc(
            "            - {host: API.example.com., path: /v1/, audience: a}\n\
             \x20           - {host: api.example.com, path: /v1, audience: b}\n",
        ),
        &format!("{at}[1]"),
        "selects the same requests as overrides[0]",
    );
    rejects(
        &override_doc("            - {host: api.example.com}\n"),
        &format!("{at}[0]"),
        "sets neither `audience` nor `scopes`",
    );
    rejects(
        &override_doc("            - {host: other.example.com, audience: a}\n"),
        &format!("{at}[0].host"),
        "would never apply",
    );
    rejects(
        &override_doc("            - {host: api.example.com, port: 8443, audience: a}\n"),
        &format!("{at}[0].host"),
        "would never apply",
    );
    rejects(
        &override_doc("            - {host: \"*.example.com\", audience: a}\n"),
        &format!("{at}[0].host"),
        "wildcard",
    );
    rejects(
        &override_doc("            - {host: api.example.com, path: \"/v1/*\", audience: a}\n"),
        &format!("{at}[0].path"),
        "literal path prefix",
    );
    rejects(
        &override_doc("            - {host: api.example.com, scopes: [a, a]}\n"),
        &format!("{at}[0].scopes[1]"),
        "duplicate scope",
    );
}

// ---- reporting -------------------------------------------------------------------

#[test]
fn every_error_is_reported_with_its_position() {
    let text = doc(
        "    - name: r\n      hosts: [\"*.com\"]\n      ports: [0]\n      credential: nope\n",
        "    unused:\n      from: {env: X}\n",
    );
    let e = parse_policy(text.as_bytes()).unwrap_err();
    let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].starts_with("8:15: spec.egress[0].hosts[0]: "),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("9:15: spec.egress[0].ports[0]: "),
        "{lines:#?}"
    );
    assert!(
        lines[2].starts_with("10:19: spec.egress[0].credential: "),
        "{lines:#?}"
    );
    assert!(
        lines[3].starts_with("12:5: spec.credentials.unused: "),
        "{lines:#?}"
    );
    assert_eq!(
        e.render("p.yaml").lines().next(),
        Some(format!("p.yaml:{}", lines[0]).as_str())
    );
}

#[test]
fn missing_fields_are_located_at_their_parent() {
    let e = parse_policy(format!("{HEAD}spec:\n  mode: audit\n").as_bytes()).unwrap_err();
    assert_eq!(e.0[0].path, "spec.egress");
    assert_eq!(e.0[0].location, Some((6, 3)), "{e}");
}

#[test]
fn validate_works_on_policies_built_in_code() {
    let mut policy = parse_policy(doc(&rule(""), "").as_bytes()).unwrap();
    assert!(crate::validate(&policy).is_ok());
    policy.spec.egress[0].ports.push(0);
    let e = crate::validate(&policy).unwrap_err();
    assert_eq!(e.0[0].path, "spec.egress[0].ports[1]");
    assert_eq!(e.0[0].location, None);
}
