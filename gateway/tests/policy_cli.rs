//! Runs the real `palisade` binary: `policy check` and `policy explain`.
use std::path::PathBuf;
use std::process::{Command, Output};

#[allow(clippy::expect_used)] // test helper: a binary that cannot start fails the test
fn palisade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .output()
        .expect("run palisade")
}

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn path(rel: &str) -> String {
    policies_dir().join(rel).display().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn check_ok_for_every_example() {
    let files: Vec<String> = [
        "deny-all",
        "github-readonly",
        "internal-api-token-grant",
        "pypi-install",
    ]
    .iter()
    .map(|n| path(&format!("examples/{n}.yaml")))
    .collect();
    let args: Vec<&str> = ["policy", "check"]
        .into_iter()
        .chain(files.iter().map(String::as_str))
        .collect();
    let out = palisade(&args);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for f in &files {
        assert!(text.contains(&format!("{f}: OK")), "{text}");
    }
}

#[test]
fn check_reports_every_error_with_position_and_exits_1() {
    let bad = path("testdata/invalid/host-tld-wildcard.yaml");
    let good = path("examples/deny-all.yaml");
    let out = palisade(&["policy", "check", &good, &bad]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains(&format!("{good}: OK")), "{text}");
    assert!(
        text.contains(&format!(
            "{bad}:9:30: spec.egress[0].hosts[1]: host `*.com` is a wildcard over the top-level domain"
        )),
        "{text}"
    );
}

#[test]
fn check_reports_several_errors_of_one_file() {
    let dir = std::env::temp_dir().join(format!("palisade-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("two-errors.yaml");
    std::fs::write(
        &file,
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata: {name: t}\nspec:\n  egress:\n    - name: r\n      hosts: [\"*\"]\n      ports: [0]\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let out = palisade(&["policy", "check", &f]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!("{f}:7:15: spec.egress[0].hosts[0]: ")),
        "{text}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{f}:8:15: spec.egress[0].ports[0]: port 0 is out of range"
        )),
        "{text}"
    );
}

#[test]
fn check_unreadable_file_exits_1() {
    let out = palisade(&["policy", "check", "/nonexistent/policy.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("/nonexistent/policy.yaml: cannot read"),
        "{out:?}"
    );
}

#[test]
fn explain_allow_names_rule_and_sub_rule() {
    let f = path("examples/github-readonly.yaml");
    let out = palisade(&[
        "policy",
        "explain",
        &f,
        "--host",
        "API.GitHub.com.",
        "--port",
        "443",
        "--method",
        "GET",
        "--path",
        "/repos/o/r",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("decision:   allow"), "{text}");
    assert!(text.contains("rule:       github-api"), "{text}");
    assert!(text.contains("sub-rule:   access:read-only"), "{text}");
    assert!(text.contains("credential: github-token"), "{text}");
}

#[test]
fn explain_deny_names_reason() {
    let f = path("examples/github-readonly.yaml");
    let out = palisade(&[
        "policy",
        "explain",
        &f,
        "--host",
        "api.github.com",
        "--port",
        "443",
        "--method",
        "GET",
        "--path",
        "/repos/o/r/actions/secrets/X",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("decision:   deny"), "{text}");
    assert!(text.contains("sub-rule:   deny[0]"), "{text}");
    assert!(text.contains("reason:     denied_by_rule"), "{text}");

    let out = palisade(&[
        "policy",
        "explain",
        &f,
        "--host",
        "evil.example",
        "--port",
        "443",
    ]);
    let text = stdout(&out);
    assert!(text.contains("decision:   deny"), "{text}");
    assert!(text.contains("rule:       (none)"), "{text}");
    assert!(
        text.contains("reason:     no_matching_rule: no egress rule names evil.example"),
        "{text}"
    );

    let out = palisade(&[
        "policy",
        "explain",
        &f,
        "--host",
        "github.com",
        "--port",
        "22",
    ]);
    assert!(
        stdout(&out)
            .contains("port_not_allowed: rule `github-git` names github.com but not port 22"),
        "{out:?}"
    );
}

#[test]
fn explain_invalid_policy_exits_1() {
    let f = path("testdata/invalid/port-zero.yaml");
    let out = palisade(&[
        "policy",
        "explain",
        &f,
        "--host",
        "api.example.com",
        "--port",
        "443",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("spec.egress[0].ports[0]: port 0 is out of range"),
        "{out:?}"
    );
}

#[test]
fn help_and_version() {
    let out = palisade(&["--version"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("palisade "), "{out:?}");
    let out = palisade(&["--help"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("policy"), "{out:?}");
    let out = palisade(&["policy", "--help"]);
    assert!(
        stdout(&out).contains("check") && stdout(&out).contains("explain"),
        "{out:?}"
    );
}
