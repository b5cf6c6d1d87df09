//! The egress data plane end to end: `palisade-sidecar init` capture rules, the real
//! `palisade-sidecar run` as UID 1337 with no capabilities, real clients (curl, python) as
//! the agent UID with every capability dropped, nginx (HTTP/HTTPS with a test CA) and
//! dnsmasq in an "internet" namespace.
//!
//! The core tests run for both capture backends (`iptables`, `nft`); the rest once.
//! Every refusal has a control that shows the same client succeeding where it should.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use palisade_e2e::bins::sidecar_argv;
use palisade_e2e::process::as_sidecar;
use palisade_e2e::*;

/// Generous limits, only to avoid hangs.
const START: Duration = Duration::from_secs(30);
const RELOAD: Duration = Duration::from_secs(30);

fn policy(mode: &str, rules: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata: {{name: e2e}}\nspec:\n  mode: {mode}\n  egress:\n{rules}"
    )
}

// The harness's IPv6 upstreams are ULA (fd00::/8), private: the rules open them explicitly.
const ALLOW_ALLOWED: &str = "    - {name: allowed, hosts: [allowed.test], ports: [443, 80], allowedCidrs: [\"fd00::/8\"]}\n";
const ALLOW_OTHER: &str =
    "    - {name: other, hosts: [other.test], ports: [443, 80], allowedCidrs: [\"fd00::/8\"]}\n";

/// Python client for bad-input probes and keep-alive HTTP; prints one JSON line.
const CLIENT_PY: &str = r#"
import json, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(20)
s.connect((host, port))
def recv_all():
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data, "eof"
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    except socket.timeout:
        return data, "timeout"
def result(**kw):
    print(json.dumps(kw), flush=True)
    sys.exit(0)
def send(b):
    try:
        s.sendall(b)
        return None
    except (BrokenPipeError, ConnectionResetError) as e:
        return type(e).__name__
if mode == "garbage":
    err = send(b"\x00\x01\x02 this is not a protocol \xff\xfe\r\n")
    data, how = recv_all()
    result(sent_error=err, how=how, data=data.decode("latin-1"))
if mode == "bad-hello":
    err = send(bytes([0x16, 3, 1, 0, 8, 2, 0, 0, 4, 3, 3, 0, 0]))
    data, how = recv_all()
    result(sent_error=err, how=how, data=data.decode("latin-1"))
if mode == "huge-host":
    err = send(b"GET / HTTP/1.1\r\nHost: " + b"a" * (64 * 1024) + b"\r\n\r\n")
    data, how = recv_all()
    result(sent_error=err, how=how, data=data[:200].decode("latin-1"))
if mode == "slowloris":
    err = None
    for b in b"GET / HTTP/1.1\r\nHost: allowed.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":
        err = send(bytes([b]))
        if err:
            break
        time.sleep(0.5)
    data, how = recv_all()
    result(sent_error=err, how=how, data=data.decode("latin-1"))
if mode == "keepalive":
    answers = []
    for h in sys.argv[4:]:
        send(("GET /ka HTTP/1.1\r\nHost: %s\r\n\r\n" % h).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                break
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode()
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = b""
        while len(body) < length:
            chunk = s.recv(length - len(body))
            if not chunk:
                break
            body += chunk
        answers.append({"status": status, "body": body.decode()})
    result(answers=answers)
"#;

struct Env {
    sidecar: Proc,
    nginx: Nginx,
    _dns: Dnsmasq,
    topo: Topology,
    policy_path: PathBuf,
    ready_file: PathBuf,
    client: PathBuf,
}

fn prereq(backend: &str) -> bool {
    let mut tools = vec![
        "curl", "nginx", "dnsmasq", "python3", "openssl", "promtool", "ss",
    ];
    tools.push(if backend == "nft" {
        "nft"
    } else {
        "iptables-restore"
    });
    require_root_or_skip(&tools)
}

impl Env {
    /// Topology, nginx, dnsmasq, capture rules for `backend`, and the sidecar with `policy`.
    fn start(backend: &str, policy: &str) -> Env {
        let topo = Topology::new().unwrap();
        let nginx = Nginx::start(&topo, DEFAULT_TLS_NAMES).unwrap();
        let dns = Dnsmasq::start(&topo, &default_records(&topo)).unwrap();
        let init = topo.pod.run(sidecar_argv(&["init", "--backend", backend]));
        init.assert_success();

        let dir = topo.pod.workdir().join("sidecar");
        std::fs::create_dir_all(&dir).unwrap();
        let uid = Some(nix::unistd::Uid::from_raw(SIDECAR_UID));
        let gid = Some(nix::unistd::Gid::from_raw(SIDECAR_UID));
        nix::unistd::chown(&dir, uid, gid).unwrap();
        let policy_path = topo.pod.workdir().join("policy.yaml");
        std::fs::write(&policy_path, policy).unwrap();
        netns::make_world_readable(&policy_path).unwrap();
        let ready_file = dir.join("ready");
        let client = topo.pod.workdir().join("client.py");
        std::fs::write(&client, CLIENT_PY).unwrap();
        netns::make_world_readable(&client).unwrap();

        let argv = sidecar_argv(&[
            "run",
            "--policy",
            &policy_path.display().to_string(),
            "--ready-file",
            &ready_file.display().to_string(),
            "--peek-timeout",
            "2s",
            "--log-format",
            "json",
        ]);
        let sidecar = topo.pod.spawn(as_sidecar(&argv)).unwrap();
        let env = Env {
            sidecar,
            nginx,
            _dns: dns,
            topo,
            policy_path,
            ready_file,
            client,
        };
        assert!(
            wait_until(START, || env.ready_file.exists()),
            "sidecar did not become ready: {}",
            env.sidecar.describe()
        );
        env
    }

    fn ca(&self) -> String {
        self.nginx.pki.ca_cert.display().to_string()
    }

    /// curl as the agent; `-sS`, bounded time, the rest from `args`.
    fn curl(&self, args: &[&str]) -> CmdOutput {
        let mut argv = vec!["curl", "-sS", "--max-time", "15"];
        argv.extend_from_slice(args);
        self.topo.pod.run(as_agent(&argv))
    }

    /// HTTPS GET of `https://<name>/` with the test CA, optionally forcing the address.
    fn https(&self, name: &str, resolve_to: Option<IpAddr>) -> CmdOutput {
        let ca = self.ca();
        let url = format!("https://{name}/");
        let resolve = resolve_to.map(|ip| format!("{name}:443:{ip}"));
        let mut args = vec!["--cacert", ca.as_str()];
        if let Some(r) = &resolve {
            args.extend(["--resolve", r.as_str()]);
        }
        args.push(&url);
        self.curl(&args)
    }

    /// The python client as the agent.
    fn client(&self, args: &[&str]) -> serde_json::Value {
        let script = self.client.display().to_string();
        let mut argv = vec![PYTHON, script.as_str()];
        argv.extend_from_slice(args);
        let out = self.topo.pod.run(as_agent(&argv));
        let line = out.stdout.lines().last().unwrap_or_default().to_string();
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("client printed no JSON ({e}): {out}"))
    }

    /// A live scrape of /metrics from outside the pod (where Prometheus sits).
    fn scrape(&self) -> String {
        let url = format!("http://{}:15020/metrics", self.topo.pod_v4());
        let out = self
            .topo
            .internet
            .run(["curl", "-sS", "--max-time", "10", &url]);
        out.assert_success();
        out.stdout
    }

    /// Value of one series (`name{labels}` exactly as exposed), 0 if absent.
    fn metric(&self, series: &str) -> f64 {
        metric(&self.scrape(), series)
    }

    /// Replace the policy file the way editors do (write a temp file, rename over).
    fn write_policy(&self, text: &str) {
        let tmp = self.policy_path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        netns::make_world_readable(&tmp).unwrap();
        std::fs::rename(&tmp, &self.policy_path).unwrap();
    }

    fn logs(&self) -> String {
        self.sidecar.stderr()
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn curl_status(out: &CmdOutput) -> String {
    out.stdout.lines().last().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------------------

fn https_passthrough_and_refusals(backend: &str) {
    if !prereq(backend) {
        return;
    }
    let env = Env::start(backend, &policy("enforce", ALLOW_ALLOWED));
    let other_ip = IpAddr::V4(env.topo.upstream_v4(1));
    let denied_ip = IpAddr::V4(env.topo.upstream_v4(2));

    // Allowed by name, TLS passes through end to end (curl verifies nginx's certificate
    // against the test CA: an interception would fail here).
    let out = env.https("allowed.test", None);
    assert!(
        out.success(),
        "allowed HTTPS must work: {out}\n{}",
        env.logs()
    );
    assert!(
        out.stdout.contains("nginx host=allowed.test uri=/"),
        "{out}"
    );
    let seen = env.nginx.requests();
    let last = seen.last().unwrap();
    assert_eq!(last["sni"], "allowed.test");
    let upstream0 = [
        env.topo.upstream_v4(0).to_string(),
        env.topo.upstream_v6(0).to_string(),
    ];
    assert!(
        upstream0.iter().any(|a| last["server_addr"] == *a.as_str()),
        "{last}"
    );
    assert_eq!(
        env.metric(
            r#"palisade_sidecar_connections_total{decision="allow",protocol="tls",rule="allowed"}"#
        ),
        1.0
    );

    // A host the policy does not list: the policy DNS refuses the name ...
    let out = env.https("denied.test", None);
    assert!(!out.success(), "denied.test must not resolve: {out}");
    // ... and a connection that names it anyway (forced address) is reset.
    let before = env.metric(r#"palisade_sidecar_denials_total{reason="no_matching_rule"}"#);
    let out = env.https("denied.test", Some(denied_ip));
    assert!(!out.success(), "denied.test must be refused: {out}");
    assert_eq!(
        env.metric(r#"palisade_sidecar_denials_total{reason="no_matching_rule"}"#),
        before + 1.0
    );

    // Direct-IP connect (no SNI): no name, no opaque rule → refused.
    let out = env.curl(&["-k", &format!("https://{denied_ip}/")]);
    assert!(!out.success(), "direct IP must be refused: {out}");
    assert_eq!(
        env.metric(r#"palisade_sidecar_denials_total{reason="opaque_tcp_not_allowed"}"#),
        1.0
    );

    // SNI spoofing: an allowed name sent to another server's address never reaches it.
    let other = [other_ip.to_string(), env.topo.upstream_v6(1).to_string()];
    let requests_to_other = |env: &Env| {
        env.nginx
            .requests()
            .iter()
            .filter(|r| other.iter().any(|a| r["server_addr"] == *a.as_str()))
            .count()
    };
    let out = env.https("allowed.test", Some(other_ip));
    assert!(!out.success(), "SNI spoofing must be refused: {out}");
    assert_eq!(
        env.metric(r#"palisade_sidecar_denials_total{reason="destination_mismatch"}"#),
        1.0
    );
    assert_eq!(
        requests_to_other(&env),
        0,
        "nothing may reach the spoofed address"
    );
    // Control: the same address is reachable for its own name when the policy allows it.
    env.write_policy(&policy("enforce", &format!("{ALLOW_ALLOWED}{ALLOW_OTHER}")));
    assert!(wait_until(RELOAD, || env
        .metric("palisade_sidecar_policy_generation")
        == 2.0));
    let out = env.https("other.test", None);
    assert!(out.success(), "control: other.test once allowed: {out}");
    assert_eq!(requests_to_other(&env), 1);

    // One audit event per denial, with the fields operators need.
    let logs = env.logs();
    let audit: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "audit" && v["event"] == "egress_denied")
        .collect();
    assert_eq!(audit.len(), 3, "{logs}");
    let spoof = audit
        .iter()
        .find(|v| v["reason"] == "destination_mismatch")
        .unwrap();
    assert_eq!(spoof["name"], "allowed.test");
    assert_eq!(spoof["rule"], "allowed");
    assert_eq!(spoof["protocol"], "tls");
    assert_eq!(spoof["original_dst"], format!("{other_ip}:443"));
    assert_eq!(spoof["mode"], "enforce");
}

fn plain_http_allowed_denied_and_per_request(backend: &str) {
    if !prereq(backend) {
        return;
    }
    let env = Env::start(backend, &policy("enforce", ALLOW_ALLOWED));
    let denied_ip = env.topo.upstream_v4(2).to_string();
    let out = env.curl(&["-w", "\n%{http_code}", "http://allowed.test/plain"]);
    assert!(out.success(), "{out}\n{}", env.logs());
    assert_eq!(curl_status(&out), "200", "{out}");
    assert!(
        out.stdout.contains("nginx host=allowed.test uri=/plain"),
        "{out}"
    );

    // A `Connection` token naming Host cannot take the Host away from the upstream (nginx
    // answers an HTTP/1.1 request without Host with 400).
    let out = env.curl(&[
        "-w",
        "\n%{http_code}",
        "-H",
        "Connection: Host",
        "http://allowed.test/conn-host",
    ]);
    assert_eq!(curl_status(&out), "200", "{out}\n{}", env.logs());
    let seen = env.nginx.requests();
    let r = seen
        .iter()
        .find(|q| q["uri"] == "/conn-host")
        .unwrap_or_else(|| panic!("nginx never saw /conn-host: {seen:?}"));
    assert_eq!(
        (&r["host"], &r["status"]),
        (&"allowed.test".into(), &200.into()),
        "{r}"
    );

    let out = env.curl(&[
        "-w",
        "\n%{http_code}",
        "--resolve",
        &format!("denied.test:80:{denied_ip}"),
        "http://denied.test/",
    ]);
    assert_eq!(curl_status(&out), "403", "{out}");
    let body: serde_json::Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "policy_denied", "reason": "no_matching_rule", "host": "denied.test"})
    );

    // Every request on a keep-alive connection is decided: the second, for another host,
    // is refused although the first was allowed.
    let allowed_ip = env.topo.upstream_v4(0).to_string();
    let r = env.client(&[
        "keepalive",
        &allowed_ip,
        "80",
        "allowed.test",
        "denied.test",
        "allowed.test",
    ]);
    let answers = r["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 3, "{r}");
    assert!(
        answers[0]["status"].as_str().unwrap().contains("200"),
        "{r}"
    );
    assert!(
        answers[1]["status"].as_str().unwrap().contains("403"),
        "{r}"
    );
    assert!(
        answers[2]["status"].as_str().unwrap().contains("200"),
        "{r}"
    );
    let ka = env
        .nginx
        .requests()
        .iter()
        .filter(|q| q["uri"] == "/ka")
        .count();
    assert_eq!(ka, 2, "only the allowed requests reach nginx");
    let text = env.scrape();
    assert_eq!(
        metric(
            &text,
            r#"palisade_sidecar_http_requests_total{decision="allow",rule="allowed"}"#
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            r#"palisade_sidecar_http_requests_total{decision="deny",rule="none"}"#
        ),
        2.0
    );
}

fn metrics_and_bad_input(backend: &str) {
    if !prereq(backend) {
        return;
    }
    let mut env = Env::start(backend, &policy("enforce", ALLOW_ALLOWED));
    let ip = env.topo.upstream_v4(0).to_string();

    let r = env.client(&["garbage", &ip, "443"]);
    assert_eq!(r["data"], "", "garbage must get nothing back: {r}");
    assert_ne!(r["how"], "timeout", "{r}");
    let r = env.client(&["bad-hello", &ip, "443"]);
    assert_eq!(r["data"], "", "{r}");
    assert_ne!(r["how"], "timeout", "{r}");
    let r = env.client(&["huge-host", &ip, "80"]);
    let data = r["data"].as_str().unwrap();
    assert!(data.is_empty() || data.starts_with("HTTP/1.1 431"), "{r}");
    assert_ne!(r["how"], "timeout", "{r}");
    let r = env.client(&["slowloris", &ip, "80"]);
    assert!(!r["data"].as_str().unwrap().contains("200 OK"), "{r}");

    let text = env.scrape();
    assert_eq!(
        metric(
            &text,
            r#"palisade_sidecar_denials_total{reason="opaque_tcp_not_allowed"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"palisade_sidecar_bad_input_total{kind="malformed_client_hello"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"palisade_sidecar_bad_input_total{kind="header_too_large"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"palisade_sidecar_bad_input_total{kind="peek_timeout"}"#
        ),
        1.0
    );
    assert!(
        env.sidecar.try_status().is_none(),
        "sidecar must survive bad input: {}",
        env.logs()
    );

    // Real traffic moves the other counters; then promtool judges a live scrape.
    assert!(env.https("allowed.test", None).success());
    let text = env.scrape();
    assert!(metric(&text, r#"palisade_sidecar_bytes_total{direction="up"}"#) > 0.0);
    assert!(metric(&text, r#"palisade_sidecar_bytes_total{direction="down"}"#) > 0.0);
    assert_eq!(
        metric(&text, "palisade_sidecar_upstream_connect_seconds_count"),
        1.0
    );
    assert_eq!(metric(&text, "palisade_sidecar_policy_generation"), 1.0);
    assert!(
        text.contains("process_resident_memory_bytes"),
        "process metrics missing"
    );
    assert!(
        text.lines().any(|l| l.starts_with("palisade_sidecar_dns_")),
        "DNS metrics missing:\n{text}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

macro_rules! per_backend {
    ($($backend:ident => $name:literal),*) => {$(
        mod $backend {
            #[test]
            fn https_passthrough_and_refusals() {
                super::https_passthrough_and_refusals($name);
            }
            #[test]
            fn plain_http_allowed_denied_and_per_request() {
                super::plain_http_allowed_denied_and_per_request($name);
            }
            #[test]
            fn metrics_and_bad_input() {
                super::metrics_and_bad_input($name);
            }
        }
    )*};
}

per_backend!(iptables => "iptables", nft => "nft");

// --------------------------------------------------------------- once, one backend -----

#[test]
fn audit_mode_lets_denied_traffic_through_and_counts_it() {
    if !prereq("iptables") {
        return;
    }
    let env = Env::start("iptables", &policy("audit", ALLOW_ALLOWED));
    let denied_ip = IpAddr::V4(env.topo.upstream_v4(2));
    let out = env.https("denied.test", Some(denied_ip));
    assert!(
        out.success(),
        "audit mode must let it through: {out}\n{}",
        env.logs()
    );
    assert!(out.stdout.contains("host=denied.test"));
    let text = env.scrape();
    assert_eq!(
        metric(
            &text,
            r#"palisade_sidecar_connections_total{decision="audit_deny",protocol="tls",rule="none"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"palisade_sidecar_denials_total{reason="no_matching_rule"}"#
        ),
        0.0
    );
    let logs = env.logs();
    assert!(
        logs.lines().any(|l| l.contains(r#""target":"audit""#)
            && l.contains("audit_deny")
            && l.contains("denied.test")),
        "{logs}"
    );
    // Never-dialable addresses stay refused in audit mode.
    let r = env.client(&["garbage", "169.254.169.254", "80"]);
    assert_eq!(r["data"], "", "{r}");
    assert_eq!(
        env.metric(r#"palisade_sidecar_denials_total{reason="forbidden_address"}"#),
        1.0
    );
}

#[test]
fn policy_hot_reload_changes_the_next_decision() {
    if !prereq("nft") {
        return;
    }
    let env = Env::start("nft", &policy("enforce", ALLOW_ALLOWED));
    assert!(env.https("allowed.test", None).success(), "{}", env.logs());
    let other_ip = IpAddr::V4(env.topo.upstream_v4(1));
    assert!(!env.https("other.test", Some(other_ip)).success());

    env.write_policy(&policy("enforce", ALLOW_OTHER));
    let switched = wait_until(RELOAD, || !env.https("allowed.test", None).success());
    assert!(switched, "the new policy never applied: {}", env.logs());
    assert!(env.https("other.test", None).success(), "{}", env.logs());
    assert_eq!(env.metric("palisade_sidecar_policy_generation"), 2.0);

    // A broken file is refused, counted, and the last good policy stays.
    env.write_policy("apiVersion: palisade.dev/v1alpha1\nkind: Policy\nspec: {egress: []}\n");
    assert!(wait_until(RELOAD, || env
        .metric("palisade_sidecar_policy_reload_failures_total")
        == 1.0));
    assert!(env.https("other.test", None).success());
    assert_eq!(env.metric("palisade_sidecar_policy_generation"), 2.0);
    assert!(env.logs().contains("refusing the changed policy file"));
}

#[test]
fn explicit_proxy_connect_and_absolute_form() {
    if !prereq("iptables") {
        return;
    }
    let env = Env::start("iptables", &policy("enforce", ALLOW_ALLOWED));
    let ca = env.ca();
    let out = env.curl(&[
        "--cacert",
        &ca,
        "-x",
        "http://127.0.0.1:15080",
        "https://allowed.test/via-proxy",
    ]);
    assert!(out.success(), "{out}\n{}", env.logs());
    assert!(out.stdout.contains("uri=/via-proxy"));
    let out = env.curl(&[
        "--cacert",
        &ca,
        "-x",
        "http://127.0.0.1:15080",
        "https://denied.test/",
    ]);
    assert!(!out.success());
    assert!(out.stderr.contains("403"), "{out}");
    let out = env.curl(&[
        "-w",
        "\n%{http_code}",
        "-x",
        "http://127.0.0.1:15080",
        "http://allowed.test/abs",
    ]);
    assert_eq!(curl_status(&out), "200", "{out}");
    let out = env.curl(&[
        "-w",
        "\n%{http_code}",
        "-x",
        "http://127.0.0.1:15080",
        "http://denied.test/abs",
    ]);
    assert_eq!(curl_status(&out), "403", "{out}");
}

#[test]
fn stopped_sidecar_means_refused_not_open() {
    if !prereq("iptables") {
        return;
    }
    let mut env = Env::start("iptables", &policy("enforce", ALLOW_ALLOWED));
    let ip = IpAddr::V4(env.topo.upstream_v4(0));
    assert!(
        env.https("allowed.test", Some(ip)).success(),
        "control: {}",
        env.logs()
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(env.sidecar.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = env
        .sidecar
        .wait_timeout(START)
        .expect("sidecar did not exit after SIGTERM");
    assert!(
        status.success(),
        "drain must exit 0: {status:?}\n{}",
        env.logs()
    );
    assert!(
        !env.ready_file.exists(),
        "the ready file must be gone once draining"
    );

    let out = env.https("allowed.test", Some(ip));
    assert_eq!(
        out.code(),
        Some(7),
        "want curl 'connection refused' (7): {out}"
    );
    let r = probe(
        &env.topo.pod,
        Some(AGENT_UID),
        &["tcp", &ip.to_string(), "443"],
    );
    assert_eq!(r.errno.as_deref(), Some("ECONNREFUSED"), "{r:?}");
    assert!(env.nginx.requests().len() == 1, "nothing new reached nginx");
}
