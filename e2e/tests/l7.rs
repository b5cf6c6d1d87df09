//! TLS interception, L7 rules over TLS and credential injection end to end: the real
//! sidecar (UID 1337, no capabilities) terminates the agent's TLS with its sandbox CA
//! (published in the shared dir), judges every request, injects a credential from a file
//! only UID 1337 can read, and talks verified TLS to nginx (test CA via `--upstream-ca`).
//! Clients are real (curl, python3) as the agent UID with every capability dropped and only
//! `<shared>/ca-bundle.pem` as trust store.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;
use std::time::Duration;

use palisade_e2e::bins::sidecar_argv;
use palisade_e2e::process::as_sidecar;
use palisade_e2e::servers::{HttpSink, raw_http};
use palisade_e2e::*;

const START: Duration = Duration::from_secs(30);
const RELOAD: Duration = Duration::from_secs(30);
/// The credential value (token68). Only in the 0600 file of UID 1337 and nginx's log.
const SECRET: &str = "s3cr3t-T0ken.for_e2e~only";
/// Ports of the HTTP sink ([`HttpSink`]) in the internet namespace.
const SINK_PLAIN: u16 = 8080;
const SINK_TLS: u16 = 8444;

fn policy(mode: &str) -> String {
    format!(
        r#"apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {{name: l7}}
spec:
  mode: {mode}
  credentials:
    token:
      from: {{file: SECRET_PATH}}
      inject: {{header: Authorization, scheme: Bearer}}
    wl:
      from: {{workloadToken: {{audience: other.test}}}}
  egress:
    - name: api
      hosts: [allowed.test]
      ports: [443]
      allowedCidrs: ["fd00::/8"]
      credential: token
      http:
        allow:
          - {{methods: [GET, HEAD], path: "/**"}}
        deny:
          - {{path: "/secret/**"}}
    - name: ws
      hosts: [allowed.test]
      ports: [8443]
      allowedCidrs: ["fd00::/8"]
      http:
        allow:
          - {{methods: [GET], path: "/ws/**"}}
    - name: git
      hosts: [allowed.test]
      ports: [9443]
      allowedCidrs: ["fd00::/8"]
      credential: token
      http:
        allow:
          - {{methods: [GET], path: "/**/info/refs", query: {{service: git-upload-pack}}}}
          - {{methods: [POST], path: "/**/git-upload-pack"}}
    - name: wl
      hosts: [other.test]
      ports: [443]
      allowedCidrs: ["fd00::/8"]
      credential: wl
    - name: plain
      hosts: [allowed.test]
      ports: [80]
      allowedCidrs: ["fd00::/8"]
    # The HTTP sink (scripts/http_sink.py): plain HTTP with HTTP rules, TLS with HTTP rules
    # and the credential, and plain HTTP without HTTP rules.
    - name: sink
      hosts: [allowed.test]
      ports: [{SINK_PLAIN}]
      allowedCidrs: ["fd00::/8"]
      http:
        allow:
          - {{methods: [GET, HEAD], path: "/**"}}
          - {{methods: [POST], path: "/upload/**"}}
        deny:
          - {{path: "/secret/**"}}
    - name: sinktls
      hosts: [allowed.test]
      ports: [{SINK_TLS}]
      allowedCidrs: ["fd00::/8"]
      credential: token
      http:
        allow:
          - {{methods: [GET, HEAD], path: "/**"}}
          - {{methods: [POST], path: "/upload/**"}}
        deny:
          - {{path: "/secret/**"}}
    - name: sinkopen
      hosts: [other.test]
      ports: [{SINK_PLAIN}]
      allowedCidrs: ["fd00::/8"]
"#
    )
}

/// Raw client for smuggling probes: sends argv[3] (Python string escapes) over TLS to
/// `<host>:443`, trusting only the bundle — or, with argv[4] = `plain`, over plain TCP to
/// `<host>:80`; prints the status line and what came back until the connection closed.
const RAW_TLS_PY: &str = r#"
import json, socket, ssl, sys
bundle, host, payload = sys.argv[1], sys.argv[2], sys.argv[3].encode().decode("unicode_escape").encode("latin-1")
plain = len(sys.argv) > 4 and sys.argv[4] == "plain"
s = socket.create_connection((host, 80 if plain else 443), timeout=20)
if plain:
    t = s
else:
    ctx = ssl.create_default_context(cafile=bundle)
    ctx.set_alpn_protocols(["http/1.1"])
    t = ctx.wrap_socket(s, server_hostname=host)
t.sendall(payload)
data = b""
try:
    while True:
        chunk = t.recv(65536)
        if not chunk:
            break
        data += chunk
except (socket.timeout, ConnectionResetError, ssl.SSLError):
    pass
print(json.dumps({"alpn": None if plain else t.selected_alpn_protocol(), "status": data.split(b"\r\n", 1)[0].decode("latin-1"), "data": data[:400].decode("latin-1")}))
"#;

/// A TLS upstream that accepts any `Upgrade` with 101 and then echoes bytes ("echo:" +
/// data); prints each request line it receives.
const UPGRADE_SERVER_PY: &str = r#"
import socket, ssl, sys, threading
cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", port))
srv.listen(64)
def handle(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            ch = t.recv(1)
            if not ch:
                return
            head += ch
        print(head.split(b"\r\n")[0].decode(), flush=True)
        if b"\r\nupgrade: websocket" in head.lower():
            t.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            while True:
                d = t.recv(4096)
                if not d:
                    break
                t.sendall(b"echo:" + d)
        else:
            t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except Exception:
        pass
    finally:
        c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// Upgrade client over TLS (bundle trust): prints the status line and the echo of "hello".
const UPGRADE_CLIENT_PY: &str = r#"
import json, socket, ssl, sys
bundle, path = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=bundle)
ctx.set_alpn_protocols(["http/1.1"])
t = ctx.wrap_socket(socket.create_connection(("allowed.test", 8443), timeout=20), server_hostname="allowed.test")
t.sendall(("GET %s HTTP/1.1\r\nHost: allowed.test:8443\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % path).encode())
head = b""
while b"\r\n\r\n" not in head:
    ch = t.recv(1)
    if not ch:
        break
    head += ch
status = head.split(b"\r\n", 1)[0].decode()
echo = ""
if " 101 " in status:
    t.sendall(b"hello")
    echo = t.recv(100).decode()
print(json.dumps({"status": status, "echo": echo}))
"#;

/// Smart-HTTP git server (the ref advertisement of `git ls-remote`) over TLS that demands
/// `Authorization: Bearer <argv[4]>`; prints each request line with the auth result.
const GIT_SERVER_PY: &str = r##"
import http.server, socket, ssl, subprocess, sys
cert, key, port, token, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == "Bearer " + token
        print("%s auth=%s" % (self.requestline, "ok" if ok else "missing"), flush=True)
        if not ok:
            self.send_response(401); self.send_header("Content-Length", "0"); self.end_headers(); return
        path, _, query = self.path.partition("?")
        if not path.endswith("/info/refs") or query != "service=git-upload-pack":
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        repo = root + path[: -len("/info/refs")]
        refs = subprocess.run(["git", "upload-pack", "--stateless-rpc", "--advertise-refs", repo], capture_output=True).stdout
        first = b"# service=git-upload-pack\n"
        body = b"%04x" % (len(first) + 4) + first + b"0000" + refs
        self.send_response(200)
        self.send_header("Content-Type", "application/x-git-upload-pack-advertisement")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
srv = S(("::", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"##;

const URLLIB_PY: &str = r#"
import json, sys, urllib.request
r = urllib.request.urlopen("https://allowed.test/py", timeout=20)
print(json.dumps({"status": r.status, "body": r.read().decode()}))
"#;

struct Env {
    sidecar: Proc,
    nginx: Nginx,
    dns: Dnsmasq,
    topo: Topology,
    policy_path: PathBuf,
    secret_path: PathBuf,
    shared: PathBuf,
    raw_tls: PathBuf,
    urllib: PathBuf,
}

fn prereq() -> bool {
    require_root_or_skip(&[
        "curl",
        "nginx",
        "dnsmasq",
        "python3",
        "openssl",
        "promtool",
        "ss",
        "iptables-restore",
    ])
}

fn chown_sidecar(p: &std::path::Path) {
    let uid = Some(nix::unistd::Uid::from_raw(SIDECAR_UID));
    let gid = Some(nix::unistd::Gid::from_raw(SIDECAR_UID));
    nix::unistd::chown(p, uid, gid).unwrap();
}

fn set_mode(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Env {
    fn start(mode: &str) -> Env {
        let topo = Topology::new().unwrap();
        let nginx = Nginx::start(&topo, DEFAULT_TLS_NAMES).unwrap();
        let dns = Dnsmasq::start(&topo, &default_records(&topo)).unwrap();
        topo.pod
            .run(sidecar_argv(&["init", "--backend", "iptables"]))
            .assert_success();

        let work = topo.pod.workdir().to_path_buf();
        // The shared dir (an emptyDir in a pod): written by the sidecar, read by the agent.
        let shared = work.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        chown_sidecar(&shared);
        set_mode(&shared, 0o755);
        // The credential: a 0600 file of UID 1337 in a 0700 directory.
        let secrets = work.join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        let secret_path = secrets.join("token");
        std::fs::write(&secret_path, format!("{SECRET}\n")).unwrap();
        chown_sidecar(&secret_path);
        set_mode(&secret_path, 0o600);
        chown_sidecar(&secrets);
        set_mode(&secrets, 0o700);
        set_mode(&work, 0o755);

        let policy_path = work.join("policy.yaml");
        std::fs::write(
            &policy_path,
            policy(mode).replace("SECRET_PATH", &secret_path.display().to_string()),
        )
        .unwrap();
        netns::make_world_readable(&policy_path).unwrap();
        let raw_tls = work.join("raw_tls.py");
        std::fs::write(&raw_tls, RAW_TLS_PY).unwrap();
        netns::make_world_readable(&raw_tls).unwrap();
        let urllib = work.join("urllib_get.py");
        std::fs::write(&urllib, URLLIB_PY).unwrap();
        netns::make_world_readable(&urllib).unwrap();

        let ready = shared.join("ready");
        let argv = sidecar_argv(&[
            "run",
            "--policy",
            &policy_path.display().to_string(),
            "--ready-file",
            &ready.display().to_string(),
            "--shared-dir",
            &shared.display().to_string(),
            "--upstream-ca",
            &nginx.pki.ca_cert.display().to_string(),
            "--log-format",
            "json",
        ]);
        let sidecar = topo.pod.spawn(as_sidecar(&argv)).unwrap();
        let env = Env {
            sidecar,
            nginx,
            dns,
            topo,
            policy_path,
            secret_path,
            shared,
            raw_tls,
            urllib,
        };
        assert!(
            wait_until(START, || ready.exists()),
            "sidecar did not become ready: {}",
            env.sidecar.describe()
        );
        env
    }

    fn bundle(&self) -> String {
        self.shared.join("ca-bundle.pem").display().to_string()
    }

    /// curl as the agent trusting only the published bundle; prints body then
    /// `\n<status> <http_version>`.
    fn curl(&self, args: &[&str]) -> CmdOutput {
        let bundle = self.bundle();
        let cert_file = format!("SSL_CERT_FILE={bundle}");
        let ca_bundle = format!("CURL_CA_BUNDLE={bundle}");
        let mut argv = vec![
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            cert_file.as_str(),
            ca_bundle.as_str(),
            "curl",
            "-sS",
            "--max-time",
            "15",
            "-w",
            "\n%{http_code} %{http_version}",
        ];
        argv.extend_from_slice(args);
        self.topo.pod.run(as_agent(&argv))
    }

    fn raw_tls(&self, payload: &str) -> serde_json::Value {
        self.raw(payload, "tls")
    }

    /// The same over plain HTTP to allowed.test:80 (transparent capture, no TLS).
    fn raw_plain(&self, payload: &str) -> serde_json::Value {
        self.raw(payload, "plain")
    }

    fn raw(&self, payload: &str, how: &str) -> serde_json::Value {
        let script = self.raw_tls.display().to_string();
        let bundle = self.bundle();
        let out = self.topo.pod.run(as_agent(&[
            PYTHON,
            script.as_str(),
            bundle.as_str(),
            "allowed.test",
            payload,
            how,
        ]));
        let line = out.stdout.lines().last().unwrap_or_default().to_string();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("no JSON ({e}): {out}"))
    }

    fn scrape(&self) -> String {
        let url = format!("http://{}:15020/metrics", self.topo.pod_v4());
        let out = self
            .topo
            .internet
            .run(["curl", "-sS", "--max-time", "10", &url]);
        out.assert_success();
        out.stdout
    }

    fn metric(&self, series: &str) -> f64 {
        self.scrape()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    fn logs(&self) -> String {
        self.sidecar.stderr()
    }
}

/// One of [`Env::raw_tls`] / [`Env::raw_plain`].
type RawSend = fn(&Env, &str) -> serde_json::Value;

/// `(status, http_version)` from the `-w` trailer.
fn status(out: &CmdOutput) -> (String, String) {
    let last = out.stdout.lines().last().unwrap_or_default();
    let mut it = last.split(' ');
    (
        it.next().unwrap_or_default().to_string(),
        it.next().unwrap_or_default().to_string(),
    )
}

#[test]
fn inspected_https_gets_the_credential_over_h2_and_http1() {
    if !prereq() {
        return;
    }
    let env = Env::start("enforce");
    let ca_pem = std::fs::read_to_string(env.shared.join("ca.pem")).unwrap();
    assert!(ca_pem.contains("BEGIN CERTIFICATE"));

    // HTTP/2 to the agent (curl's default with ALPN), HTTP/1.1 upstream.
    let out = env.curl(&["https://allowed.test/path"]);
    assert_eq!(
        status(&out),
        ("200".into(), "2".into()),
        "{out}\n{}",
        env.logs()
    );
    assert!(
        out.stdout.contains("nginx host=allowed.test uri=/path"),
        "{out}"
    );
    let out = env.curl(&["--http1.1", "https://allowed.test/path1"]);
    assert_eq!(status(&out), ("200".into(), "1.1".into()), "{out}");

    // The agent tries its own credentials: nginx sees only the injected one.
    let out = env.curl(&[
        "-H",
        "Authorization: Bearer evil",
        "-H",
        "authorization: Basic ZXZpbA==",
        "-H",
        "Proxy-Authorization: Basic ZXZpbA==",
        "https://allowed.test/evil",
    ]);
    assert_eq!(status(&out).0, "200", "{out}");
    let out = env.curl(&[
        "--http1.1",
        "-H",
        "Connection: close, X-Hop",
        "-H",
        "X-Hop: 1",
        "-H",
        "Authorization: Bearer evil",
        "https://allowed.test/evil1",
    ]);
    assert_eq!(status(&out).0, "200", "{out}");

    let seen = env.nginx.requests();
    for uri in ["/path", "/path1", "/evil", "/evil1"] {
        let r = seen
            .iter()
            .find(|r| r["uri"] == uri)
            .unwrap_or_else(|| panic!("nginx never saw {uri}: {seen:?}"));
        assert_eq!(r["authorization"], format!("Bearer {SECRET}"), "{r}");
        assert_eq!(r["proxy_authorization"], "", "{r}");
        assert_eq!(r["sni"], "allowed.test", "{r}");
        assert_eq!(r["scheme"], "https", "{r}");
        assert_eq!(r["protocol"], "HTTP/1.1", "{r}");
    }

    // The explicit proxy (CONNECT) inspects the same way.
    let out = env.curl(&[
        "-x",
        "http://127.0.0.1:15080",
        "https://allowed.test/via-connect",
    ]);
    assert_eq!(status(&out).0, "200", "{out}\n{}", env.logs());
    assert!(
        env.nginx
            .requests()
            .iter()
            .any(|r| r["uri"] == "/via-connect"
                && r["authorization"] == format!("Bearer {SECRET}")),
        "CONNECT request did not get the credential"
    );

    // python urllib with the bundle.
    let script = env.urllib.display().to_string();
    let cert_file = format!("SSL_CERT_FILE={}", env.bundle());
    let out = env.topo.pod.run(as_agent(&[
        "env",
        "-i",
        cert_file.as_str(),
        PYTHON,
        script.as_str(),
    ]));
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains(r#""status": 200"#), "{out}");
    assert!(
        env.nginx
            .requests()
            .iter()
            .any(|r| r["uri"] == "/py" && r["authorization"] == format!("Bearer {SECRET}")),
        "python request did not get the credential"
    );

    // Control: trusting only nginx's real CA fails — the agent really talks to our leaf.
    let ca = env.nginx.pki.ca_cert.display().to_string();
    let out = env.topo.pod.run(as_agent(&[
        "curl",
        "-sS",
        "--max-time",
        "15",
        "--cacert",
        ca.as_str(),
        "https://allowed.test/real-ca",
    ]));
    assert!(!out.success(), "the agent must see the sandbox leaf: {out}");

    // The agent cannot read the secret, and it is not in its output or environment.
    let secret = env.secret_path.display().to_string();
    let out = env.topo.pod.run(as_agent(&["cat", secret.as_str()]));
    assert!(!out.success(), "agent must not read the secret: {out}");
    let out = env.topo.pod.run(as_agent(&["env"]));
    assert!(!out.stdout.contains(SECRET));
    assert!(!env.logs().contains(SECRET), "secret in sidecar logs");

    // Metrics and audit: injections counted, fingerprints only, promtool clean.
    assert!(
        env.metric(
            r#"palisade_sidecar_credential_injections_total{credential="token",outcome="injected"}"#
        ) >= 6.0
    );
    assert!(env.metric(r#"palisade_sidecar_leaf_cache_total{result="hit"}"#) >= 1.0);
    assert!(env.logs().contains("credential_injected"));
    let metrics_file = env.topo.pod.workdir().join("metrics.txt");
    std::fs::write(&metrics_file, env.scrape()).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics_file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Upstream connections are pooled across agent connections: after the sequential
    // requests above (each its own agent connection), nginx holds one idle keep-alive
    // connection per address family the agent used — not zero (no reuse) and not one per
    // request.
    let out = env
        .topo
        .internet
        .run(["ss", "-Htn", "state", "established", "( sport = :443 )"]);
    let established = out.stdout.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(
        (1..=2).contains(&established),
        "expected 1-2 pooled upstream connections, got {established}: {out}"
    );

    // A credential source this sidecar cannot serve fails closed: 502, nothing upstream.
    let before = env.nginx.requests().len();
    let out = env.curl(&["https://other.test/wl"]);
    assert_eq!(status(&out).0, "502", "{out}");
    assert!(out.stdout.contains("credential_unavailable"), "{out}");
    assert_eq!(env.nginx.requests().len(), before);
}

#[test]
fn http_rules_over_tls_enforce_then_audit() {
    if !prereq() {
        return;
    }
    let env = Env::start("enforce");
    let out = env.curl(&["https://allowed.test/read"]);
    assert_eq!(status(&out).0, "200", "{out}\n{}", env.logs());
    let out = env.curl(&["-X", "POST", "-d", "x=1", "https://allowed.test/write"]);
    assert_eq!(status(&out).0, "403", "{out}");
    let body: serde_json::Value =
        serde_json::from_str(out.stdout.lines().next().unwrap_or_default()).unwrap();
    assert_eq!(body["error"], "policy_denied");
    assert_eq!(body["reason"], "no_matching_http_rule");
    assert_eq!(body["rule"], "api");
    assert!(!env.nginx.requests().iter().any(|r| r["uri"] == "/write"));
    assert_eq!(
        env.metric(r#"palisade_sidecar_http_requests_total{decision="deny",rule="api"}"#),
        1.0
    );

    // Path tricks cannot reach the denied subtree; the control passes.
    for path in [
        "/secret/x",
        "/a/../secret/x",
        "//secret/x",
        "/a/%2e%2e/secret/x",
        "/%2e%2e/secret/x",
        "/secret%2Fx",
        "/SECRET/../secret/x",
        "/./secret/x",
    ] {
        let url = format!("https://allowed.test{path}");
        let out = env.curl(&["--path-as-is", url.as_str()]);
        let code = status(&out).0;
        assert!(code == "403" || code == "400", "{path}: {out}");
    }
    assert!(
        !env.nginx
            .requests()
            .iter()
            .any(|r| r["uri"].as_str().unwrap_or_default().contains("secret")),
        "a denied path reached nginx: {:?}",
        env.nginx.requests()
    );

    // Audit mode: the same POST passes and is counted as audit_deny.
    let text = std::fs::read_to_string(&env.policy_path)
        .unwrap()
        .replace("mode: enforce", "mode: audit");
    let tmp = env.policy_path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    netns::make_world_readable(&tmp).unwrap();
    std::fs::rename(&tmp, &env.policy_path).unwrap();
    let passed = wait_until(RELOAD, || {
        status(&env.curl(&["-X", "POST", "-d", "x=1", "https://allowed.test/write"])).0 == "200"
    });
    assert!(
        passed,
        "audit mode did not let the POST through: {}",
        env.logs()
    );
    assert!(env.nginx.requests().iter().any(|r| r["uri"] == "/write"));
    assert!(
        env.metric(r#"palisade_sidecar_http_requests_total{decision="audit_deny",rule="api"}"#)
            >= 1.0
    );
}

#[test]
fn websocket_upgrades_over_inspected_tls_follow_the_http_rules() {
    if !prereq() {
        return;
    }
    let env = Env::start("enforce");
    let dir = env.topo.internet.workdir();
    let server_script = dir.join("upgrade_server.py");
    std::fs::write(&server_script, UPGRADE_SERVER_PY).unwrap();
    let server = env
        .topo
        .internet
        .spawn([
            PYTHON.to_string(),
            server_script.display().to_string(),
            env.nginx.pki.server_cert.display().to_string(),
            env.nginx.pki.server_key.display().to_string(),
            "8443".to_string(),
        ])
        .unwrap();
    wait_for_tcp_listen(&env.topo.internet, 8443, START).unwrap();
    let client = env.topo.pod.workdir().join("upgrade_client.py");
    std::fs::write(&client, UPGRADE_CLIENT_PY).unwrap();
    netns::make_world_readable(&client).unwrap();
    let run = |path: &str| {
        let script = client.display().to_string();
        let bundle = env.bundle();
        let out = env
            .topo
            .pod
            .run(as_agent(&[PYTHON, script.as_str(), bundle.as_str(), path]));
        let line = out.stdout.lines().last().unwrap_or_default().to_string();
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {out}\n{}", env.logs()))
    };
    // Allowed GET path: 101, then bytes are relayed both ways through the terminated TLS.
    let r = run("/ws/chat");
    assert!(
        r["status"].as_str().unwrap_or_default().contains(" 101 "),
        "{r}\n{}",
        env.logs()
    );
    assert_eq!(r["echo"], "echo:hello", "{r}");
    // Another path: the HTTP rules refuse the upgrade request; the server never sees it.
    let r = run("/admin");
    assert!(
        r["status"].as_str().unwrap_or_default().contains(" 403 "),
        "{r}"
    );
    let seen = server.stdout();
    assert!(seen.contains("GET /ws/chat HTTP/1.1"), "{seen}");
    assert!(!seen.contains("/admin"), "{seen}");
}

#[test]
fn git_ls_remote_gets_the_injected_credential() {
    if !prereq() || !require_root_or_skip(&["git"]) {
        return;
    }
    let env = Env::start("enforce");
    let dir = env.topo.internet.workdir().join("git");
    std::fs::create_dir_all(&dir).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=e2e",
                "-c",
                "user.email=e2e@test",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let bare = dir.join("repo.git").display().to_string();
    let work = dir.join("work").display().to_string();
    git(&["init", "--bare", bare.as_str()]);
    git(&["init", work.as_str()]);
    git(&["-C", work.as_str(), "commit", "--allow-empty", "-m", "init"]);
    git(&[
        "-C",
        work.as_str(),
        "push",
        bare.as_str(),
        "HEAD:refs/heads/main",
    ]);
    let script = dir.join("git_server.py");
    std::fs::write(&script, GIT_SERVER_PY).unwrap();
    let server = env
        .topo
        .internet
        .spawn([
            PYTHON.to_string(),
            script.display().to_string(),
            env.nginx.pki.server_cert.display().to_string(),
            env.nginx.pki.server_key.display().to_string(),
            "9443".to_string(),
            SECRET.to_string(),
            dir.display().to_string(),
        ])
        .unwrap();
    wait_for_tcp_listen(&env.topo.internet, 9443, START).unwrap();

    let cainfo = format!("GIT_SSL_CAINFO={}", env.bundle());
    let out = env.topo.pod.run(as_agent(&[
        "env",
        "-i",
        "HOME=/tmp",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        cainfo.as_str(),
        "git",
        "ls-remote",
        "https://allowed.test:9443/repo.git",
    ]));
    assert!(out.success(), "{out}\n{}\n{}", server.stdout(), env.logs());
    assert!(out.stdout.contains("refs/heads/main"), "{out}");
    let seen = server.stdout();
    assert!(
        seen.contains("/repo.git/info/refs?service=git-upload-pack HTTP/1.1 auth=ok"),
        "{seen}"
    );
    assert!(!seen.contains("auth=missing"), "{seen}");
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));

    // Pushing starts with the git-receive-pack advertisement, which the rule does not
    // allow: refused by the sidecar, never seen by the server.
    let out = env.curl(&["https://allowed.test:9443/repo.git/info/refs?service=git-receive-pack"]);
    assert_eq!(status(&out).0, "403", "{out}");
    assert!(
        !server.stdout().contains("receive-pack"),
        "{}",
        server.stdout()
    );
}

#[test]
fn smuggling_probes_are_refused_before_the_upstream() {
    if !prereq() {
        return;
    }
    let env = Env::start("enforce");
    // Control: a well-formed request over the raw client works.
    let ok = env
        .raw_tls("GET /raw-ok HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n");
    assert!(
        ok["status"].as_str().unwrap().contains(" 200 "),
        "{ok}\n{}",
        env.logs()
    );
    assert_eq!(ok["alpn"], "http/1.1");

    let smuggled = "GET /smuggled HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n";
    // Each probe is refused on its raw bytes, before hyper normalises it: one 400 with the
    // JSON error body, then the connection is closed, so the "smuggled" request after it is
    // never read.
    let probes = [
        (
            "cl+te",
            "/p1",
            format!(
                "GET /p1 HTTP/1.1\\r\\nHost: allowed.test\\r\\nContent-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n{smuggled}"
            ),
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "te+cl",
            "/p1b",
            format!(
                "POST /p1b HTTP/1.1\\r\\nHost: allowed.test\\r\\nTransfer-Encoding: chunked\\r\\nContent-Length: 46\\r\\n\\r\\n0\\r\\n\\r\\n{smuggled}"
            ),
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "double-cl",
            "/p2",
            format!(
                "GET /p2 HTTP/1.1\\r\\nHost: allowed.test\\r\\nContent-Length: 0\\r\\nContent-Length: 46\\r\\n\\r\\n{smuggled}"
            ),
            "more than one Content-Length header",
        ),
        (
            "te-not-chunked",
            "/p2b",
            format!(
                "POST /p2b HTTP/1.1\\r\\nHost: allowed.test\\r\\nTransfer-Encoding: gzip, chunked\\r\\n\\r\\n0\\r\\n\\r\\n{smuggled}"
            ),
            "Transfer-Encoding other than exactly `chunked`",
        ),
        (
            "obs-fold",
            "/p3",
            format!(
                "GET /p3 HTTP/1.1\\r\\nHost: allowed.test\\r\\nX-Folded: a\\r\\n b\\r\\n\\r\\n{smuggled}"
            ),
            "folded (obs-fold) header line",
        ),
        (
            "double-host",
            "/p4",
            format!(
                "GET /p4 HTTP/1.1\\r\\nHost: allowed.test\\r\\nHost: other.test\\r\\n\\r\\n{smuggled}"
            ),
            "more than one Host header",
        ),
        (
            "bare-lf",
            "/lf",
            format!("GET /lf HTTP/1.1\\nHost: allowed.test\\nContent-Length: 0\\n\\n{smuggled}"),
            "line feed without carriage return in the request head",
        ),
        (
            "bare-lf-in-one-field",
            "/lf2",
            format!(
                "GET /lf2 HTTP/1.1\\r\\nHost: allowed.test\\r\\nX-A: 1\\nContent-Length: 0\\r\\n\\r\\n{smuggled}"
            ),
            "line feed without carriage return in the request head",
        ),
    ];
    // The same probes on plain HTTP (transparent capture of port 80).
    let plain = env.raw_plain(
        "GET /plain-ok HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n",
    );
    assert!(
        plain["status"].as_str().unwrap().contains(" 200 "),
        "plain control: {plain}\n{}",
        env.logs()
    );
    let sends: [(&str, RawSend); 2] = [("tls", Env::raw_tls), ("plain", Env::raw_plain)];
    for ((name, _, payload, reason), (how, send)) in probes
        .iter()
        .flat_map(|p| sends.iter().map(move |s| (p, s)))
    {
        let name = format!("{name} over {how}");
        let r = send(&env, payload);
        let data = r["data"].as_str().unwrap_or_default();
        assert!(
            r["status"].as_str().unwrap_or_default().contains(" 400 "),
            "{name}: {r}"
        );
        assert_eq!(
            data.matches("HTTP/1.1 ").count(),
            1,
            "{name}: exactly one answer, then close: {r}"
        );
        if *how == "plain" && name.starts_with("obs-fold") {
            // The first head of a plain connection is peeked with httparse before anything
            // else, which refuses obs-fold itself: a bare 400 (`malformed_http`).
            continue;
        }
        assert!(
            data.contains("application/json")
                && data.contains(r#""error":"bad_request""#)
                && data.contains(&format!(r#""reason":"{reason}""#)),
            "{name}: JSON error body: {r}"
        );
    }
    // A well-formed request pipelined before a refused one is answered first, then the 400.
    let r = env.raw_tls(&format!(
        "GET /pipelined-ok HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\nGET /p6 HTTP/1.1\\r\\nHost: allowed.test\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n{smuggled}"
    ));
    let data = r["data"].as_str().unwrap_or_default();
    assert!(
        r["status"].as_str().unwrap_or_default().contains(" 200 "),
        "pipelined: {r}"
    );
    let answers: Vec<&str> = data
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &data[i..])
        .collect();
    assert!(
        answers.len() == 2 && answers[1].starts_with("HTTP/1.1 400 "),
        "pipelined: 200 then 400: {r}"
    );
    // Host disagreeing with the SNI.
    let r =
        env.raw_tls("GET /p5 HTTP/1.1\\r\\nHost: other.test\\r\\nConnection: close\\r\\n\\r\\n");
    assert!(
        r["status"].as_str().unwrap_or_default().contains(" 421 "),
        "{r}"
    );
    let seen = env.nginx.requests();
    assert!(
        seen.iter().any(|r| r["uri"] == "/pipelined-ok")
            && seen.iter().any(|r| r["uri"] == "/plain-ok"),
        "the control request must reach nginx: {seen:?}"
    );
    let refused = probes.iter().map(|(_, uri, _, _)| *uri);
    for uri in refused.chain(["/p5", "/p6", "/smuggled"]) {
        assert!(
            !seen.iter().any(|r| r["uri"] == uri),
            "{uri} reached nginx: {seen:?}"
        );
    }
    // Counted by reason, and audited.
    for (kind, at_least) in [
        ("cl_and_te", 5.0),
        ("duplicate_content_length", 2.0),
        ("bad_transfer_encoding", 2.0),
        ("obs_fold", 1.0),
        ("multiple_host", 2.0),
        ("bare_lf", 4.0),
    ] {
        let n = env.metric(&format!(
            r#"palisade_sidecar_bad_input_total{{kind="{kind}"}}"#
        ));
        assert!(n >= at_least, "bad_input_total{{kind={kind}}} = {n}");
    }
    let logs = env.logs();
    let audited: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "audit" && v["event"] == "request_refused")
        .collect();
    assert_eq!(audited.len(), 2 * probes.len(), "{logs}");
    assert!(audited.iter().all(|v| v["status"] == 400), "{audited:?}");
    // Inspected refusals name the SNI; plain ones carry the original destination.
    assert_eq!(
        audited
            .iter()
            .filter(|v| v["name"] == "allowed.test")
            .count(),
        probes.len() + 1,
        "{audited:?}"
    );
}

/// One way the agent's HTTP reaches the [`HttpSink`].
#[derive(Clone, Copy, Debug)]
struct Via {
    name: &'static str,
    /// `direct` (transparent capture), `proxy` (absolute form on 15080) or `connect`.
    via: &'static str,
    tls: bool,
    host: &'static str,
    port: u16,
}

const PLAIN: Via = Via {
    name: "transparent-plain",
    via: "direct",
    tls: false,
    host: "allowed.test",
    port: SINK_PLAIN,
};
const ABSOLUTE: Via = Via {
    name: "explicit-absolute",
    via: "proxy",
    tls: false,
    host: "allowed.test",
    port: SINK_PLAIN,
};
const CONNECT_PLAIN: Via = Via {
    name: "connect-plain",
    via: "connect",
    tls: false,
    host: "allowed.test",
    port: SINK_PLAIN,
};
const INSPECTED: Via = Via {
    name: "inspected-tls",
    via: "direct",
    tls: true,
    host: "allowed.test",
    port: SINK_TLS,
};
const CONNECT_TLS: Via = Via {
    name: "connect-tls",
    via: "connect",
    tls: true,
    host: "allowed.test",
    port: SINK_TLS,
};
/// Plain HTTP to a rule without HTTP rules.
const OPEN: Via = Via {
    name: "transparent-open",
    via: "direct",
    tls: false,
    host: "other.test",
    port: SINK_PLAIN,
};

/// Escape bytes for raw_http.py (Python `unicode_escape`).
fn py_escape(raw: &str) -> String {
    raw.replace('\\', "\\\\")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

impl Env {
    fn sink(&self) -> HttpSink {
        HttpSink::start(&self.topo.internet, SINK_PLAIN, SINK_TLS, &self.nginx.pki).unwrap()
    }

    /// `method path` with `headers` (CRLF-terminated lines) and `body` the way `via` sends
    /// it (absolute form on the explicit proxy); `more` is sent after a pause, and
    /// `shutdown` closes the write side.
    fn send(
        &self,
        via: Via,
        head: (&str, &str, &str),
        body: &str,
        more: &[&str],
        shutdown: bool,
    ) -> serde_json::Value {
        let (method, path, headers) = head;
        let authority = format!("{}:{}", via.host, via.port);
        let target = if via.via == "proxy" {
            format!("http://{authority}{path}")
        } else {
            path.to_string()
        };
        let payload =
            format!("{method} {target} HTTP/1.1\r\nHost: {authority}\r\n{headers}\r\n{body}");
        let mut spec = serde_json::json!({
            "host": via.host,
            "port": via.port,
            "via": via.via,
            "payload": py_escape(&payload),
            "chunks": more.iter().map(|m| py_escape(m)).collect::<Vec<_>>(),
            "pause": 1.0,
            "shutdown": shutdown,
        });
        if via.tls {
            spec["tls"] = self.bundle().into();
        }
        raw_http(&self.topo.pod, AGENT_UID, &spec)
    }
}

/// The status code of a raw_http.py result.
fn code(r: &serde_json::Value) -> String {
    r["status"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// Request lines the sink received that contain `needle`.
fn sink_lines(sink: &HttpSink, needle: &str) -> Vec<serde_json::Value> {
    sink.requests()
        .into_iter()
        .filter(|r| r["line"].as_str().unwrap_or_default().contains(needle))
        .collect()
}

#[test]
fn h2c_upgrades_never_reach_the_upstream() {
    if !prereq() {
        return;
    }
    let env = Env::start("enforce");
    let sink = env.sink();
    let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n";
    for via in [PLAIN, ABSOLUTE, CONNECT_PLAIN, INSPECTED, CONNECT_TLS, OPEN] {
        let path = format!("/h2c-{}", via.name);
        let r = env.send(via, ("GET", &path, h2c), "", &[], false);
        // Forwarded as a plain request (the sink answers it 200), never switched.
        assert_eq!(code(&r), "200", "{}: {r}\n{}", via.name, env.logs());
        let data = r["data"].as_str().unwrap_or_default().to_ascii_lowercase();
        assert!(data.contains("connection: close"), "{}: {r}", via.name);
        assert!(data.ends_with("sink ok\n"), "{}: {r}", via.name);
    }
    // The sink (which would have switched) saw every request, none offering a switch; the
    // inspected ones carry the injected credential.
    let events = sink.events();
    assert!(
        !events.iter().any(|e| e["event"] == "switched"),
        "{events:?}"
    );
    for via in [PLAIN, ABSOLUTE, CONNECT_PLAIN, INSPECTED, CONNECT_TLS, OPEN] {
        let seen = sink_lines(&sink, &format!("/h2c-{} ", via.name));
        assert_eq!(seen.len(), 1, "{}: {events:?}", via.name);
        let headers = &seen[0]["headers"];
        assert_eq!(
            headers["upgrade"],
            serde_json::Value::Null,
            "{}: {headers}",
            via.name
        );
        assert_eq!(
            headers["http2-settings"],
            serde_json::Value::Null,
            "{}: {headers}",
            via.name
        );
        assert_eq!(
            headers["host"],
            format!("{}:{}", via.host, via.port),
            "{}: {headers}",
            via.name
        );
        if via.tls {
            assert_eq!(
                headers["authorization"],
                format!("Bearer {SECRET}"),
                "{headers}"
            );
        }
    }
    assert!(!env.logs().contains(SECRET), "secret in sidecar logs");
}

#[test]
fn path_parameters_are_refused_when_the_rule_has_http_rules() {
    if !prereq() {
        return;
    }
    let env = Env::start("enforce");
    let sink = env.sink();
    let paths = [
        "/secret;x=1/y",
        "/ok/..;/secret/y",
        "/ok/x;jsessionid=1",
        "/ok/%3B/secret",
    ];
    let vias = [PLAIN, ABSOLUTE, CONNECT_PLAIN, INSPECTED, CONNECT_TLS];
    for via in vias {
        for path in paths {
            let r = env.send(via, ("GET", path, ""), "", &[], false);
            let data = r["data"].as_str().unwrap_or_default();
            assert_eq!(code(&r), "400", "{} {path}: {r}\n{}", via.name, env.logs());
            assert!(
                data.contains(r#""error":"bad_request""#) && data.contains("ambiguous path"),
                "{} {path}: {r}",
                via.name
            );
        }
        // Control: the same rule, a plain path.
        let path = format!("/ok/fine-{}", via.name);
        let r = env.send(via, ("GET", &path, ""), "", &[], false);
        assert_eq!(code(&r), "200", "{} control: {r}", via.name);
    }
    // Without HTTP rules the path is not judged and goes as sent.
    let r = env.send(OPEN, ("GET", "/open;jsessionid=1", ""), "", &[], false);
    assert_eq!(code(&r), "200", "{r}");

    let requests = sink.requests();
    for via in vias {
        assert_eq!(
            sink_lines(&sink, &format!("/ok/fine-{} ", via.name)).len(),
            1,
            "{requests:?}"
        );
    }
    assert_eq!(
        sink_lines(&sink, "/open;jsessionid=1 ").len(),
        1,
        "{requests:?}"
    );
    let leaked: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|r| {
            let line = r["line"].as_str().unwrap_or_default();
            line.contains("secret") || line.contains("/ok/x") || line.contains("%3B")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "refused paths reached the upstream: {leaked:?}"
    );
    let n = env.metric(r#"palisade_sidecar_bad_input_total{kind="ambiguous_path"}"#);
    assert_eq!(n, (vias.len() * paths.len()) as f64);
}

#[test]
fn method_overrides_are_decided_like_the_method() {
    if !prereq() {
        return;
    }
    let env = Env::start("enforce");
    let sink = env.sink();
    let form = "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 18\r\n";
    // (method, path, headers, body, expected status) — the rule allows GET/HEAD anywhere and
    // POST under /upload/ only.
    let cases: [(&str, &str, &str, &str, &str); 9] = [
        (
            "GET",
            "/o-hdr",
            "X-HTTP-Method-Override: DELETE\r\n",
            "",
            "403",
        ),
        ("GET", "/o-hdr2", "X-HTTP-Method: POST\r\n", "", "403"),
        ("GET", "/o-hdr3", "X-Method-Override: put\r\n", "", "403"),
        ("GET", "/o-query?_method=PUT", "", "", "403"),
        ("POST", "/upload/o-form", form, "a=1&_method=DELETE", "403"),
        (
            "GET",
            "/o-bad",
            "X-HTTP-Method-Override: GET DELETE\r\n",
            "",
            "400",
        ),
        // Allowed overrides pass unchanged; so do forms without one.
        (
            "GET",
            "/o-head",
            "X-HTTP-Method-Override: HEAD\r\n",
            "",
            "200",
        ),
        ("POST", "/upload/o-ok", form, "a=1&b=2&c=3&d=4&e5", "200"),
        ("GET", "/o-get?_method=GET", "", "", "200"),
    ];
    for via in [PLAIN, ABSOLUTE, INSPECTED] {
        for (method, path, headers, body, want) in cases {
            let r = env.send(via, (method, path, headers), body, &[], false);
            assert_eq!(
                code(&r),
                want,
                "{} {method} {path}: {r}\n{}",
                via.name,
                env.logs()
            );
        }
    }
    let requests = sink.requests();
    for (_, path, _, _, want) in cases {
        let seen = sink_lines(&sink, &format!(" {path} HTTP/1.1"));
        let expected = if want == "200" { 3 } else { 0 };
        assert_eq!(seen.len(), expected, "{path}: {requests:?}");
    }
    assert_eq!(
        env.metric(r#"palisade_sidecar_bad_input_total{kind="bad_method_override"}"#),
        3.0
    );
    assert!(
        env.metric(r#"palisade_sidecar_denials_total{reason="no_matching_http_rule"}"#) >= 15.0
    );
}

#[test]
fn broken_request_bodies_never_reach_the_upstream() {
    if !prereq() {
        return;
    }
    let env = Env::start("enforce");
    let sink = env.sink();
    let chunked = "Transfer-Encoding: chunked\r\n";
    let cases: [(&str, &str, bool); 5] = [
        ("bad-size", "zz\r\nabc\r\n0\r\n\r\n", false),
        ("no-crlf", "3\r\nabcdef\r\n0\r\n\r\n", false),
        ("bare-lf", "3\nabc\r\n0\r\n\r\n", false),
        ("bad-trailer", "3\r\nabc\r\n0\r\nX-T: 1\n\r\n", false),
        ("truncated", "10\r\nabc", true),
    ];
    for via in [OPEN, PLAIN, ABSOLUTE, CONNECT_PLAIN, INSPECTED] {
        for (what, body, shutdown) in cases {
            if shutdown && via.tls {
                continue; // a TCP half-close under TLS is a TLS error, not a short body
            }
            let path = format!("/upload/broken-{what}-{}", via.name);
            let r = env.send(via, ("POST", &path, chunked), body, &[], shutdown);
            let data = r["data"].as_str().unwrap_or_default();
            assert_eq!(code(&r), "400", "{} {what}: {r}\n{}", via.name, env.logs());
            assert!(
                data.contains(r#""reason":"malformed request body""#)
                    && data.to_ascii_lowercase().contains("connection: close"),
                "{} {what}: {r}",
                via.name
            );
        }
    }
    // Content-Length body cut short.
    let r = env.send(
        OPEN,
        ("POST", "/upload/broken-short", "Content-Length: 100\r\n"),
        "abc",
        &[],
        true,
    );
    assert_eq!(code(&r), "400", "{r}");
    // Nothing of any of them reached the upstream.
    let broken = sink_lines(&sink, "/broken-");
    assert!(broken.is_empty(), "{broken:?}");

    // Longer than the pre-read window, broken after it: the start went upstream, but the
    // upstream never got a complete request (the connection was aborted before the end).
    let mut long = String::new();
    for _ in 0..5 {
        long.push_str(&format!("3800\r\n{}\r\n", "x".repeat(0x3800)));
    }
    for via in [OPEN, INSPECTED] {
        let path = format!("/upload/long-{}", via.name);
        // (A urlencoded or type-less POST that long would be a 413 on a rule with HTTP
        // rules: its `_method` could not be checked.)
        let head = (
            "POST",
            path.as_str(),
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n",
        );
        let r = env.send(via, head, &long, &["nothex\r\n"], false);
        assert_eq!(code(&r), "400", "{}: {r}\n{}", via.name, env.logs());
        let seen = sink_lines(&sink, &path);
        assert_eq!(seen.len(), 1, "{}: {:?}", via.name, sink.events());
        let conn = seen[0]["conn"].clone();
        let events = sink.events();
        let body = events
            .iter()
            .find(|e| e["event"] == "body" && e["conn"] == conn)
            .unwrap_or_else(|| panic!("no body event: {events:?}"));
        // The start (at least the window) went upstream; the end never did.
        assert_eq!(body["complete"], false, "{body}");
        assert!(body["length"].as_u64().unwrap() >= 64 * 1024, "{body}");
    }
    // Control: a well-formed chunked body arrives complete.
    let r = env.send(
        OPEN,
        ("POST", "/upload/fine", chunked),
        "3\r\nabc\r\n0\r\n\r\n",
        &[],
        false,
    );
    assert_eq!(code(&r), "200", "{r}");
    let events = sink.events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "body" && e["complete"] == true && e["data"] == "abc"),
        "{events:?}"
    );
    assert!(env.metric(r#"palisade_sidecar_bad_input_total{kind="malformed_body"}"#) >= 22.0);
    assert_eq!(
        env.metric(r#"palisade_sidecar_upstream_errors_total{kind="http"}"#),
        0.0
    );
}

#[test]
fn connection_tokens_cannot_strip_host_or_the_credential() {
    if !prereq() {
        return;
    }
    let env = Env::start("enforce");
    let sink = env.sink();
    let named = "Connection: host, authorization, content-type, content-length, cookie, x-http-method-override, x-hop\r\n\
                 Authorization: Bearer agent\r\nCookie: c=1\r\nX-HTTP-Method-Override: HEAD\r\nX-Hop: 1\r\n\
                 Content-Type: text/plain\r\nContent-Length: 2\r\n";
    let vias = [PLAIN, ABSOLUTE, CONNECT_PLAIN, INSPECTED, CONNECT_TLS, OPEN];
    for via in vias {
        let path = format!("/upload/conn-{}", via.name);
        let r = env.send(via, ("POST", &path, named), "hi", &[], false);
        assert_eq!(code(&r), "200", "{}: {r}\n{}", via.name, env.logs());
        let path = format!("/conn-{}", via.name);
        let head = (
            "GET",
            path.as_str(),
            "Connection: Host, X-Hop\r\nX-Hop: 1\r\n",
        );
        let r = env.send(via, head, "", &[], false);
        assert_eq!(code(&r), "200", "{}: {r}", via.name);
    }
    for via in vias {
        let host = format!("{}:{}", via.host, via.port);
        let seen = sink_lines(&sink, &format!(" /conn-{} ", via.name));
        assert_eq!(seen.len(), 1, "{}: {:?}", via.name, sink.requests());
        let headers = &seen[0]["headers"];
        assert_eq!(headers["host"], host, "{}: {headers}", via.name);
        assert_eq!(headers["x-hop"], serde_json::Value::Null, "{headers}");
        // Every header the decision or the injection relied on arrived as judged.
        let seen = sink_lines(&sink, &format!(" /upload/conn-{} ", via.name));
        assert_eq!(seen.len(), 1, "{}: {:?}", via.name, sink.requests());
        let headers = &seen[0]["headers"];
        let authorization = if via.tls {
            format!("Bearer {SECRET}")
        } else {
            "Bearer agent".to_string()
        };
        for (name, value) in [
            ("host", host.as_str()),
            ("authorization", authorization.as_str()),
            ("cookie", "c=1"),
            ("x-http-method-override", "HEAD"),
            ("content-type", "text/plain"),
            ("content-length", "2"),
        ] {
            assert_eq!(headers[name], value, "{} {name}: {headers}", via.name);
        }
        assert_eq!(headers["x-hop"], serde_json::Value::Null, "{headers}");
    }
    let complete = sink
        .events()
        .iter()
        .filter(|e| e["event"] == "body" && e["complete"] == true && e["data"] == "hi")
        .count();
    assert_eq!(complete, vias.len());
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn bench_inspecting_path_vs_direct() {
    if !prereq() || !require_root_or_skip(&["h2load", "wrk"]) {
        return;
    }
    let env = Env::start("enforce");
    let direct = env.topo.upstream_v4(0).to_string();
    let rss = |env: &Env| {
        std::fs::read_to_string(format!("/proc/{}/status", env.sidecar.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .unwrap_or_default()
            .to_string()
    };
    let hwm = |env: &Env| {
        std::fs::read_to_string(format!("/proc/{}/status", env.sidecar.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or_default()
            .to_string()
    };
    // Where the time goes, per run: load on this (shared) machine, sidecar CPU seconds,
    // upstream connections opened, DNS queries the sidecar made, TCP retransmissions.
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let cpu = |env: &Env| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", env.sidecar.pid()))
            .unwrap_or_default();
        let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime, stime are fields 14 and 15 of /proc/pid/stat (1-based, comm = 2).
        (ticks(11) + ticks(12)) / 100.0
    };
    let counters = |env: &Env| -> [f64; 4] {
        let tcp = env
            .topo
            .pod
            .run(["cat", "/proc/net/netstat", "/proc/net/snmp"]);
        let lines: Vec<&str> = tcp.stdout.lines().collect();
        let find = |want: &str| -> f64 {
            for pair in lines.chunks(2) {
                if let [names, values] = pair {
                    let names: Vec<&str> = names.split_whitespace().collect();
                    let values: Vec<&str> = values.split_whitespace().collect();
                    if let Some(i) = names.iter().position(|n| *n == want) {
                        return values.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                    }
                }
            }
            0.0
        };
        [
            env.metric("palisade_sidecar_upstream_connect_seconds_count"),
            env.dns.queries().matches("query[").count() as f64,
            find("RetransSegs"),
            find("TCPSynRetrans"),
        ]
    };
    println!(
        "sidecar before load: {} {} (loadavg {})",
        rss(&env),
        hwm(&env),
        loadavg()
    );
    let runs: Vec<(&str, bool, Vec<String>)> = vec![
        (
            "inspected h2 (agent)",
            true,
            vec![
                "h2load",
                "-n",
                "5000",
                "-c",
                "10",
                "-m",
                "10",
                "https://allowed.test/bench",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        ),
        (
            "direct h2 (internet ns)",
            false,
            vec![
                "h2load".to_string(),
                "-n".into(),
                "5000".into(),
                "-c".into(),
                "10".into(),
                "-m".into(),
                "10".into(),
                format!("https://{direct}/bench"),
            ],
        ),
        (
            "inspected http/1.1 (agent)",
            true,
            vec![
                "wrk",
                "-t",
                "2",
                "-c",
                "10",
                "-d",
                "10s",
                "--latency",
                "https://allowed.test/bench",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        ),
        (
            "direct http/1.1 (internet ns)",
            false,
            vec![
                "wrk".to_string(),
                "-t".into(),
                "2".into(),
                "-c".into(),
                "10".into(),
                "-d".into(),
                "10s".into(),
                "--latency".into(),
                format!("https://{direct}/bench"),
            ],
        ),
    ];
    for (what, agent, argv) in runs {
        let (cpu0, c0) = (cpu(&env), counters(&env));
        let load0 = loadavg();
        let out = if agent {
            env.topo.pod.run(as_agent(&argv))
        } else {
            env.topo.internet.run(&argv)
        };
        assert!(out.success(), "{what}: {out}");
        if argv[0] == "h2load" {
            assert!(out.stdout.contains(" 0 failed, 0 errored"), "{what}: {out}");
        }
        assert!(!out.stdout.contains("Non-2xx"), "{what}: {out}");
        let keep: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| {
                l.contains("req/s")
                    || l.contains("Requests/sec")
                    || l.contains("requests:")
                    || l.contains("time for request")
                    || l.trim_start().starts_with("50%")
                    || l.trim_start().starts_with("99%")
            })
            .collect();
        println!("== {what}\n{}", keep.join("\n"));
        if agent {
            let (cpu1, c1) = (cpu(&env), counters(&env));
            println!(
                "sidecar after: {} {}; cpu {:.1} s; upstream connects {}; dns queries {}; \
                 tcp retransmits {} (syn {}); loadavg before {load0}, after {}",
                rss(&env),
                hwm(&env),
                cpu1 - cpu0,
                c1[0] - c0[0],
                c1[1] - c0[1],
                c1[2] - c0[2],
                c1[3] - c0[3],
                loadavg()
            );
        }
    }
}

/// testssl.sh (Debian package `testssl.sh`, binary `testssl`) against the sidecar's
/// terminating side, from inside the pod as the agent (the connection is captured and
/// terminated like any agent connection; nothing leaves the test namespaces). Ignored by
/// default because it takes minutes and needs an extra package.
#[test]
#[ignore = "needs testssl.sh and several minutes: run with --ignored --nocapture testssl"]
fn testssl_against_the_terminating_side() {
    if !prereq() || !require_root_or_skip(&["testssl"]) {
        return;
    }
    let env = Env::start("enforce");
    let out_dir = env.topo.pod.workdir().join("testssl");
    std::fs::create_dir_all(&out_dir).unwrap();
    set_mode(&out_dir, 0o777);
    let json = out_dir.join("result.json");
    let json_arg = json.display().to_string();
    let ca_arg = env.shared.join("ca.pem").display().to_string();
    let home = format!("HOME={}", out_dir.display());
    let out = env.topo.pod.run(as_agent(&[
        "env",
        home.as_str(),
        "testssl",
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "off",
        "--ip",
        "one",
        "--protocols",
        "--server-defaults",
        "--each-cipher",
        "--add-ca",
        ca_arg.as_str(),
        "--jsonfile",
        json_arg.as_str(),
        "allowed.test:443",
    ]));
    println!("{}", out.stdout);
    let findings: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default())
            .unwrap_or_else(|e| panic!("testssl wrote no JSON ({e}): {out}"));
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| f["finding"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("no `{id}` in testssl output: {out}"))
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            finding(old).contains("not offered"),
            "{old}: {}",
            finding(old)
        );
    }
    for current in ["TLS1_2", "TLS1_3"] {
        assert!(
            finding(current).starts_with("offered"),
            "{current}: {}",
            finding(current)
        );
    }
    let bad: Vec<&serde_json::Value> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .collect();
    // Anything HIGH/CRITICAL is printed; the protocol checks above are the assertion.
    for f in &bad {
        println!("testssl {}: {} — {}", f["severity"], f["id"], f["finding"]);
    }
}
