//! The full sidecar ↔ gateway chain in the namespace harness: the real gateway binary
//! (`palisade gateway serve`, embedded store in a temp dir) runs in the "internet" namespace
//! on its veth address; a sandbox, its policy and a secret are created through the API; the
//! real sidecar (UID 1337) bootstraps with the one-time token, gets its policy and the
//! secret over the session, and injects it into the agent's (UID 1000) requests to nginx.
//! Then: a policy update changes the next decision; the JWT is refreshed under traffic
//! with no failed request; the gateway is killed (traffic keeps flowing on the cached
//! policy and credentials) and restarted (the session reconnects); the sandbox is deleted
//! (the identity is revoked and injection stops: 502).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_e2e::bins::sidecar_argv;
use palisade_e2e::process::as_sidecar;
use palisade_e2e::*;

const START: Duration = Duration::from_secs(60);
/// The secret value (token68); only in the gateway store, the sidecar's memory and nginx's log.
const SECRET: &str = "gw-s3cr3t.T0ken_for~e2e";
const GATEWAY_PORT: u16 = 18443;
/// The upstream audience the policy's `workloadToken` credential names.
const WORKLOAD_AUDIENCE: &str = "https://other.test";
const GATEWAY_ADMIN_PORT: u16 = 18490;
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef0123";

fn policy(extra_deny: &str) -> String {
    format!(
        r#"apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {{name: chain}}
spec:
  credentials:
    token:
      from: {{secret: {{name: api-token, key: token}}}}
      inject: {{header: Authorization, scheme: Bearer}}
    wl:
      from: {{workloadToken: {{audience: "{WORKLOAD_AUDIENCE}"}}}}
      inject: {{header: Authorization, scheme: Bearer}}
  egress:
    - name: workload
      hosts: [other.test]
      ports: [443]
      allowedCidrs: ["fd00::/8"]
      credential: wl
      http:
        allow:
          - {{methods: [GET], path: "/**"}}
    - name: api
      hosts: [allowed.test]
      ports: [443]
      allowedCidrs: ["fd00::/8"]
      credential: token
      http:
        allow:
          - {{methods: [GET], path: "/**"}}
        deny:
          - {{path: "/never/**"}}{extra_deny}
"#
    )
}

fn prereq() -> bool {
    require_root_or_skip(&[
        "curl",
        "nginx",
        "dnsmasq",
        "python3",
        "openssl",
        "ss",
        "iptables-restore",
    ])
}

fn chown_sidecar(p: &Path) {
    let id = Some(nix::unistd::Uid::from_raw(SIDECAR_UID));
    let gid = Some(nix::unistd::Gid::from_raw(SIDECAR_UID));
    nix::unistd::chown(p, id, gid).unwrap();
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The gateway process in the internet namespace.
struct Gateway {
    proc: Option<Proc>,
    dir: PathBuf,
    url: String,
}

impl Gateway {
    fn start(topo: &Topology, dir: &Path) -> Gateway {
        let token_file = dir.join("admin-token");
        if !token_file.exists() {
            std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
            set_mode(&token_file, 0o600);
        }
        let listen = format!("{}:{GATEWAY_PORT}", topo.upstream_v4(0));
        let url = format!("http://{listen}");
        let mut g = Gateway {
            proc: None,
            dir: dir.to_path_buf(),
            url,
        };
        g.spawn(topo, &listen);
        g
    }

    fn spawn(&mut self, topo: &Topology, listen: &str) {
        let bin = workspace_bin("palisade").display().to_string();
        let data = self.dir.join("data").display().to_string();
        let token = self.dir.join("admin-token").display().to_string();
        let admin = format!("127.0.0.1:{GATEWAY_ADMIN_PORT}");
        let proc = topo
            .internet
            .spawn([
                bin.as_str(),
                "gateway",
                "serve",
                "--listen",
                listen,
                "--admin-listen",
                admin.as_str(),
                "--data-dir",
                data.as_str(),
                "--admin-token-file",
                token.as_str(),
                "--insecure-plaintext",
                // The shortest the gateway allows: refresh happens at 45–51 s.
                "--token-ttl",
                "60s",
            ])
            .unwrap();
        wait_for_tcp_listen(&topo.internet, GATEWAY_PORT, START)
            .unwrap_or_else(|e| panic!("{e}: {}", proc.describe()));
        self.proc = Some(proc);
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// An admin API call with curl from the internet namespace (the token from a header
    /// file, never on the command line). Returns (status, body).
    fn api(&self, topo: &Topology, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let headers = self.dir.join("headers");
        std::fs::write(
            &headers,
            format!("Authorization: Bearer {ADMIN_TOKEN}\nContent-Type: application/json\n"),
        )
        .unwrap();
        let body_file = self.dir.join("body");
        std::fs::write(&body_file, body.unwrap_or("")).unwrap();
        let url = format!("{}{path}", self.url);
        let h = format!("@{}", headers.display());
        let d = format!("@{}", body_file.display());
        let mut argv = vec![
            "curl",
            "-sS",
            "--max-time",
            "15",
            "-X",
            method,
            "-H",
            &h,
            "-w",
            "\n%{http_code}",
        ];
        if body.is_some() {
            argv.extend(["--data-binary", d.as_str()]);
        }
        argv.push(url.as_str());
        let out = topo.internet.run(&argv);
        let (text, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), text.to_owned())
    }
}

struct Env {
    sidecar: Proc,
    nginx: Nginx,
    _dns: Dnsmasq,
    gateway: Gateway,
    topo: Topology,
    shared: PathBuf,
    sandbox_id: String,
}

impl Env {
    fn start() -> Env {
        let topo = Topology::new().unwrap();
        let nginx = Nginx::start(&topo, DEFAULT_TLS_NAMES).unwrap();
        let dns = Dnsmasq::start(&topo, &default_records(&topo)).unwrap();
        topo.pod
            .run(sidecar_argv(&["init", "--backend", "iptables"]))
            .assert_success();
        let work = topo.pod.workdir().to_path_buf();
        set_mode(&work, 0o755);
        let gwdir = work.join("gateway");
        std::fs::create_dir_all(&gwdir).unwrap();
        set_mode(&gwdir, 0o700);
        let gateway = Gateway::start(&topo, &gwdir);

        // Secret, policy, sandbox — through the API.
        let secret = serde_json::json!({"data": {"token": SECRET}}).to_string();
        let (code, body) = gateway.api(&topo, "PUT", "/v1/secrets/api-token", Some(&secret));
        assert!((200..300).contains(&code), "PUT secret: {code} {body}");
        assert!(
            !body.contains(SECRET),
            "the gateway echoed a secret value: {body}"
        );
        let (code, body) = gateway.api(&topo, "PUT", "/v1/policies/chain", Some(&policy("")));
        assert!((200..300).contains(&code), "PUT policy: {code} {body}");
        let spec = serde_json::json!({"name": "chain-e2e", "policy": "chain"}).to_string();
        let (code, body) = gateway.api(&topo, "POST", "/v1/sandboxes", Some(&spec));
        assert!((200..300).contains(&code), "POST sandbox: {code} {body}");
        let created: serde_json::Value = serde_json::from_str(&body).unwrap();
        let sandbox_id = created["sandbox"]["id"].as_str().unwrap().to_owned();
        let bootstrap = created["bootstrapToken"].as_str().unwrap().to_owned();

        // The one-time token: a 0600 file of UID 1337 in a 0700 directory.
        let secrets = work.join("identity");
        std::fs::create_dir_all(&secrets).unwrap();
        let token_file = secrets.join("bootstrap-token");
        std::fs::write(&token_file, format!("{bootstrap}\n")).unwrap();
        chown_sidecar(&token_file);
        set_mode(&token_file, 0o600);
        chown_sidecar(&secrets);
        set_mode(&secrets, 0o700);
        let shared = work.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        chown_sidecar(&shared);
        set_mode(&shared, 0o755);

        let ready = shared.join("ready");
        let argv = sidecar_argv(&[
            "run",
            "--gateway",
            &gateway.url,
            "--gateway-insecure-plaintext",
            "--sandbox-id",
            &sandbox_id,
            "--token-file",
            &token_file.display().to_string(),
            "--ready-file",
            &ready.display().to_string(),
            "--shared-dir",
            &shared.display().to_string(),
            "--upstream-ca",
            &nginx.pki.ca_cert.display().to_string(),
            "--shim-socket",
            &work.join("no-shim.sock").display().to_string(),
            "--log-format",
            "json",
        ]);
        let sidecar = topo.pod.spawn(as_sidecar(&argv)).unwrap();
        let env = Env {
            sidecar,
            nginx,
            _dns: dns,
            gateway,
            topo,
            shared,
            sandbox_id,
        };
        assert!(
            wait_until(START, || ready.exists()),
            "sidecar did not become ready: {}",
            env.sidecar.describe()
        );
        env
    }

    /// curl as the agent trusting only the published bundle: (status, body).
    fn curl(&self, url: &str) -> (String, String) {
        let bundle = self.shared.join("ca-bundle.pem").display().to_string();
        let ca = format!("CURL_CA_BUNDLE={bundle}");
        let out = self.topo.pod.run(as_agent(&[
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            ca.as_str(),
            "curl",
            "-sS",
            "--max-time",
            "15",
            "-w",
            "\n%{http_code}",
            url,
        ]));
        let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "000"));
        (code.trim().to_owned(), body.to_owned())
    }

    fn metric(&self, series: &str) -> f64 {
        let url = format!("http://{}:15020/metrics", self.topo.pod_v4());
        let out = self
            .topo
            .internet
            .run(["curl", "-sS", "--max-time", "10", &url]);
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The Authorization header nginx saw on its most recent request for `uri`.
    fn upstream_auth(&self, uri: &str) -> Option<String> {
        self.nginx
            .requests()
            .iter()
            .rev()
            .find(|r| r["uri"] == uri)
            .and_then(|r| r["authorization"].as_str().map(str::to_owned))
    }

    fn logs(&self) -> String {
        self.sidecar.stderr()
    }
}

#[test]
fn gateway_chain_policy_credentials_refresh_outage_and_revocation() {
    if !prereq() {
        return;
    }
    let mut env = Env::start();

    // 1. The policy and the secret came over the session; the secret is injected.
    let (code, body) = env.curl("https://allowed.test/one");
    assert_eq!(code, "200", "{body}\n{}", env.logs());
    assert_eq!(
        env.upstream_auth("/one").as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert!(
        !env.logs().contains(SECRET),
        "the sidecar logged the secret"
    );
    assert_eq!(
        env.metric(r#"palisade_sidecar_gateway_session_state{state="connected"}"#),
        1.0
    );

    // 1b. A gateway-minted workload token for other.test's audience, which the upstream
    // side (here: the test, with nginx's log) verifies against the gateway's JWKS.
    let (code, body) = env.curl("https://other.test/wl");
    assert_eq!(code, "200", "{body}\n{}", env.logs());
    let auth = env
        .upstream_auth("/wl")
        .expect("no Authorization at the upstream");
    let jwt = auth.strip_prefix("Bearer ").expect("a Bearer token");
    let (c, jwks) = env
        .gateway
        .api(&env.topo, "GET", "/.well-known/jwks.json", None);
    assert_eq!(c, 200, "{jwks}");
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("palisade-workload+jwt"));
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[WORKLOAD_AUDIENCE]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sandbox_id"], env.sandbox_id.as_str(), "{claims}");
    // A token for another audience does not verify.
    validation.set_audience(&["https://allowed.test"]);
    assert!(jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation).is_err());

    // 2. A policy update on the gateway changes the next request's decision.
    let (code, _) = env.curl("https://allowed.test/probe/x");
    assert_eq!(code, "200");
    let (c, b) = env.gateway.api(
        &env.topo,
        "PUT",
        "/v1/policies/chain",
        Some(&policy("\n          - {path: \"/probe/**\"}")),
    );
    assert!((200..300).contains(&c), "{c} {b}");
    assert!(
        wait_until(Duration::from_secs(30), || env
            .curl("https://allowed.test/probe/x")
            .0
            == "403"),
        "the policy update did not arrive: {}",
        env.logs()
    );
    let (code, body) = env.curl("https://allowed.test/probe/x");
    assert_eq!(code, "403");
    assert!(body.contains("policy_denied"), "{body}");

    // 3. The JWT (60 s) is refreshed under traffic; no request fails across it.
    let refreshed = r#"palisade_sidecar_jwt_refreshes_total{outcome="refreshed"}"#;
    let before = env.metric(refreshed);
    let mut n = 0;
    let ok = wait_until(Duration::from_secs(120), || {
        n += 1;
        let (code, body) = env.curl(&format!("https://allowed.test/r{n}"));
        assert_eq!(
            code,
            "200",
            "request {n} failed around a refresh: {body}\n{}",
            env.logs()
        );
        env.metric(refreshed) > before
    });
    assert!(ok, "no JWT refresh observed: {}", env.logs());
    let (code, _) = env.curl("https://allowed.test/after-refresh");
    assert_eq!(code, "200");
    assert_eq!(
        env.upstream_auth("/after-refresh").as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );

    // 4. Gateway killed: the cached policy and credentials keep working.
    env.gateway.kill();
    let (code, body) = env.curl("https://allowed.test/while-down");
    assert_eq!(code, "200", "{body}\n{}", env.logs());
    assert_eq!(
        env.upstream_auth("/while-down").as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(
        env.curl("https://allowed.test/probe/x").0,
        "403",
        "policy kept"
    );
    assert!(wait_until(Duration::from_secs(30), || env.metric(
        r#"palisade_sidecar_gateway_session_state{state="connected"}"#
    ) == 0.0));

    // 5. Restart: the session reconnects and updates flow again.
    let listen = format!("{}:{GATEWAY_PORT}", env.topo.upstream_v4(0));
    // Same data dir: same keys, same store.
    env.gateway.spawn(&env.topo, &listen);
    assert!(
        wait_until(Duration::from_secs(90), || env.metric(
            r#"palisade_sidecar_gateway_session_state{state="connected"}"#
        ) == 1.0),
        "the session did not reconnect: {}",
        env.logs()
    );
    assert!(env.metric("palisade_sidecar_gateway_session_reconnects_total") >= 1.0);
    let (c, b) = env
        .gateway
        .api(&env.topo, "PUT", "/v1/policies/chain", Some(&policy("")));
    assert!((200..300).contains(&c), "{c} {b}");
    assert!(
        wait_until(Duration::from_secs(30), || env
            .curl("https://allowed.test/probe/x")
            .0
            == "200"),
        "the policy update after the restart did not arrive: {}",
        env.logs()
    );

    // 6. Sandbox deleted: the identity is revoked and injection stops (fail closed: 502).
    let path = format!("/v1/sandboxes/{}", env.sandbox_id);
    let (c, b) = env.gateway.api(&env.topo, "DELETE", &path, None);
    assert!((200..300).contains(&c), "{c} {b}");
    assert!(
        wait_until(Duration::from_secs(120), || env
            .curl("https://allowed.test/gone")
            .0
            == "502"),
        "injection did not stop after the sandbox was deleted: {}",
        env.logs()
    );
    let (_, body) = env.curl("https://allowed.test/gone");
    assert!(body.contains("credential_unavailable"), "{body}");
    assert!(
        env.metric(r#"palisade_sidecar_jwt_refreshes_total{outcome="rebootstrap_impossible"}"#)
            >= 1.0
    );
    assert_eq!(env.metric("palisade_sidecar_jwt_expiry_seconds"), 0.0);
}
