//! Schemathesis (pip `schemathesis`, v4 CLI) against the real `palisade`
//! binary's `/openapi.json`, on loopback only, with the admin bearer token.
//! Passes only if schemathesis reports no failure and the gateway's own
//! metrics count zero 5xx answers over a run that really exercised every
//! operation.
//!
//! Under `CI=true` a missing schemathesis fails the test; otherwise it skips.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "schemathesis-admin-token-0123456789abcdef";

/// Checks that must all pass. `unsupported_method` is on (a 405 names the
/// allowed methods in `Allow`). Still left out: `positive_data_acceptance` —
/// the SandboxSpec schema now states the real name/label/command limits, but
/// the last run (session 2) still found 4 schema-valid requests refused
/// (OpenAPI 3.0 cannot state label-key lengths or "first command argument
/// non-empty", and the policy body is YAML text the schema cannot describe).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
unsupported_method,\
missing_required_header,use_after_free,ensure_resource_availability,ignored_auth";

/// Wall-clock budget handed to schemathesis (`--max-time`), in seconds.
const BUDGET_SECS: &str = "60";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain HTTP/1.1 GET to loopback; returns (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Sum of every sample of `name` whose labels contain `label`.
fn sum_samples(scrape: &str, name: &str, label: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn schemathesis_available() -> bool {
    Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn start_gateway(dir: &Path, api: u16, admin: u16) -> Gateway {
    let token = dir.join("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["gateway", "serve", "--insecure-plaintext"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{api}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--admin-token-file")
        .arg(&token)
        // One principal (admin) sends every request: keep the per-principal
        // limiter out of the way so the run reaches the handlers.
        .args([
            "--rate-limit-per-sec",
            "100000",
            "--rate-limit-burst",
            "100000",
        ])
        .env_remove("PALISADE_CONFIG")
        .env("PALISADE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut gw = Gateway(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = gw.0.try_wait().unwrap() {
            panic!(
                "gateway exited with {status} before /ready:\n{}",
                std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
            );
        }
        if http_get(admin, "/ready").is_some_and(|(s, _)| s == 200) {
            return gw;
        }
        assert!(Instant::now() < deadline, "gateway never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    if !schemathesis_available() {
        let msg = "schemathesis (v4) is needed: pip install schemathesis";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipping: {msg}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (api, admin) = (free_port(), free_port());
    let _gw = start_gateway(dir.path(), api, admin);
    let report = dir.path().join("report.json");

    let out = Command::new("schemathesis")
        .arg("run")
        .arg(format!("http://127.0.0.1:{api}/openapi.json"))
        .arg("--header")
        .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
        .args(["--checks", CHECKS])
        .args(["--max-examples", "25"])
        .args(["--max-time", BUDGET_SECS])
        // One worker: hypothesis' lambda-description cache is not thread-safe
        // ("AST constructor recursion depth mismatch" under --workers 2).
        .args(["--workers", "1"])
        // The policy long-poll may legitimately hold a request for 30s.
        .args(["--request-timeout", "45"])
        .args(["--generation-database", "none"])
        .args(["--no-color", "--report", "json"])
        .arg("--report-json-path")
        .arg(&report)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();

    let scrape = http_get(admin, "/metrics").unwrap().1;
    let server_errors = sum_samples(
        &scrape,
        "palisade_gateway_requests_total",
        "status_class=\"5xx\"",
    );
    let answered = sum_samples(&scrape, "palisade_gateway_requests_total", "route=");

    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["failures"], serde_json::json!([]), "{stdout}");
    assert_eq!(r["errors"], serde_json::json!([]), "{stdout}");
    assert_eq!(r["operations"]["errored"], 0, "{stdout}");
    // The run really happened: every documented operation tested, many cases.
    let total = r["operations"]["total"].as_u64().unwrap();
    assert!(total >= 15, "only {total} operations in the document");
    assert_eq!(r["operations"]["tested"], total, "{stdout}");
    let generated = r["test_cases"]["generated"].as_u64().unwrap();
    assert!(generated >= total * 10, "only {generated} test cases");
    assert!(
        answered >= generated as f64 / 2.0,
        "gateway counted {answered} requests for {generated} cases"
    );
    // Independent of schemathesis: the gateway itself answered no 5xx.
    assert_eq!(server_errors, 0.0, "5xx answers:\n{scrape}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    eprintln!(
        "schemathesis: {generated} cases over {total} operations, {answered} requests, 0 5xx"
    );
}
