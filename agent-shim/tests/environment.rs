//! Credential scrubbing and trust variables, seen from the workload.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a panic is the failure report

mod common;

use common::*;

const SECRETS: [(&str, &str); 4] = [
    ("GITHUB_TOKEN", "ghp_TESTVALUE_github_1234"),
    ("AWS_SECRET_ACCESS_KEY", "TESTVALUE_aws_wJalrXUtnFEMI"),
    ("DB_PASSWORD", "TESTVALUE_db_hunter2"),
    ("CUSTOM_THING", "TESTVALUE_custom"),
];

const TRUST: [&str; 7] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "AWS_CA_BUNDLE",
];

#[test]
fn secrets_scrubbed_trust_exported_values_never_logged() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let bundle = dir.path().join("ca-bundle.pem");
    std::fs::write(&bundle, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let mut cmd = shim_cmd(
        &hardened(AGENT_UID, AGENT_UID),
        dir.path(),
        &[
            "--no-wait",
            "--ca-bundle",
            bundle.to_str().unwrap(),
            "--scrub-env",
            "CUSTOM_*",
            "--keep-env",
            "KEEP_TOKEN",
            "--",
            "sh",
            "-c",
            // The shim's own environ still has the secrets: it must not be readable.
            r#"env; cat /proc/$PPID/environ 2>&1 | tr '\0' '\n'; exit 0"#,
        ],
    );
    for (k, v) in SECRETS {
        cmd.env(k, v);
    }
    cmd.env("KEEP_TOKEN", "kept-value")
        .env("PLAIN_VAR", "plain");
    let out = output(cmd);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{err}");
    for (k, v) in SECRETS {
        assert!(
            !text.contains(&format!("{k}=")),
            "{k} reached the workload:\n{text}"
        );
        assert!(!text.contains(v), "value of {k} visible to the workload");
        assert!(!err.contains(v), "value of {k} in the shim's log");
        assert!(err.contains(k), "removed name {k} should be logged: {err}");
    }
    assert!(
        text.contains("Permission denied"),
        "shim environ readable: {text}"
    );
    assert!(text.contains("KEEP_TOKEN=kept-value\n"), "{text}");
    assert!(text.contains("PLAIN_VAR=plain\n"), "{text}");
    for var in TRUST {
        assert!(
            text.contains(&format!("{var}={}\n", bundle.display())),
            "{var} missing:\n{text}"
        );
    }
}

#[test]
fn no_trust_vars_without_a_bundle() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let mut cmd = shim_cmd(
        &hardened(AGENT_UID, AGENT_UID),
        dir.path(),
        &["--no-wait", "--", "env"],
    );
    for var in TRUST {
        cmd.env_remove(var);
    }
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for var in TRUST {
        let prefix = format!("{var}=");
        assert!(
            !stdout(&out).lines().any(|l| l.starts_with(&prefix)),
            "{var} set without a bundle"
        );
    }
    assert!(
        stderr(&out).contains("no-ca-bundle.pem not found"),
        "{}",
        stderr(&out)
    );
}
