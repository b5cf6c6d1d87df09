//! The full sidecar ↔ gateway chain in the namespace harness: the real gateway binary
//! (`palisade gateway serve`, embedded store in a temp dir) runs in the "internet" namespace
//! on its veth address; a sandbox, its policy and a secret are created through the API; the
//! real sidecar (UID 1337) bootstraps with the one-time token, gets its policy and the
//! secret over the session, and injects it into the agent's (UID 1000) requests to nginx.
//! Then: a policy update changes the next decision; the JWT (10 s lifetime) is refreshed
//! under traffic with no failed request; the gateway is killed (traffic keeps flowing on the
//! cached policy and credentials) and restarted after the JWT expired (the expired JWT is
//! refreshed within the leeway, the session reconnects); the sandbox is deleted (the
//! identity is revoked and injection stops: 502).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_e2e::bins::sidecar_argv;
use palisade_e2e::chain::{
    Gateway, SidecarFiles, agent_curl, create_sandbox, metric_value, set_mode, sidecar_metrics,
};
use palisade_e2e::process::as_sidecar;
use palisade_e2e::*;

const START: Duration = Duration::from_secs(60);
/// The secret value (token68); only in the gateway store, the sidecar's memory and nginx's log.
const SECRET: &str = "gw-s3cr3t.T0ken_for~e2e";
/// The upstream audience the policy's `workloadToken` credential names.
const WORKLOAD_AUDIENCE: &str = "https://other.test";
/// Flags of every gateway start: the JWT lifetime shortened to a few seconds (the sidecar
/// refreshes at 7.5–8.5 s, so the test sees several refreshes); the leeway lets a JWT that
/// expired during the outage below still be refreshed.
const GATEWAY_FLAGS: &[&str] = &["--token-ttl", "10s", "--leeway", "60s"];

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
        set_mode(&work, 0o755).unwrap();
        let gwdir = work.join("gateway");
        std::fs::create_dir_all(&gwdir).unwrap();
        set_mode(&gwdir, 0o700).unwrap();
        let gateway = Gateway::start_with(&topo, &gwdir, START, GATEWAY_FLAGS).unwrap();

        // Secret, policy, sandbox — through the API. The secret's allowance: the
        // cluster-wide policy `chain`, sent only to allowed.test:443 (its `api` rule).
        let secret = serde_json::json!({
            "data": {"token": SECRET},
            "allowedPolicies": ["chain"],
            "allowedHosts": ["allowed.test:443"],
        })
        .to_string();
        let (code, body) = gateway.api(&topo, "PUT", "/v1/secrets/api-token", Some(&secret));
        assert!((200..300).contains(&code), "PUT secret: {code} {body}");
        assert!(
            !body.contains(SECRET),
            "the gateway echoed a secret value: {body}"
        );
        let (code, body) = gateway.api(&topo, "PUT", "/v1/policies/chain", Some(&policy("")));
        assert!((200..300).contains(&code), "PUT policy: {code} {body}");
        let (sandbox_id, bootstrap) =
            create_sandbox(&gateway, &topo, "chain-e2e", "chain").unwrap();
        let files = SidecarFiles::prepare(&work, &bootstrap).unwrap();
        let argv = files.run_argv(&gateway, &sandbox_id, &nginx.pki.ca_cert, &[]);
        let sidecar = topo.pod.spawn(as_sidecar(&argv)).unwrap();
        let env = Env {
            sidecar,
            nginx,
            _dns: dns,
            gateway,
            topo,
            shared: files.shared.clone(),
            sandbox_id,
        };
        assert!(
            wait_until(START, || files.ready.exists()),
            "sidecar did not become ready: {}",
            env.sidecar.describe()
        );
        env
    }

    /// curl as the agent trusting only the published bundle: (status, body).
    fn curl(&self, url: &str) -> (String, String) {
        agent_curl(&self.topo, &self.shared.join("ca-bundle.pem"), url, 15)
    }

    fn metric(&self, series: &str) -> f64 {
        metric_value(&sidecar_metrics(&self.topo), series)
    }

    /// The Authorization header nginx saw on its most recent request for `uri`.
    fn upstream_auth(&self, uri: &str) -> Option<String> {
        self.nginx.authorization_for(uri)
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
    // The documented Python verifier (docs/examples) agrees, fetching the JWKS itself.
    let (c, oidc) = env
        .gateway
        .api(&env.topo, "GET", "/.well-known/openid-configuration", None);
    assert_eq!(c, 200, "{oidc}");
    let oidc: serde_json::Value = serde_json::from_str(&oidc).unwrap();
    let issuer = oidc["issuer"].as_str().unwrap();
    assert_eq!(claims["iss"], issuer);
    let token_file = env.gateway.dir().join("workload-token");
    std::fs::write(&token_file, &auth).unwrap();
    let verify = |audience: &str| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/examples/verify-workload-token.py")
            .display()
            .to_string();
        let jwks_url = format!("{}/.well-known/jwks.json", env.gateway.url);
        env.topo.internet.run([
            "/usr/bin/python3",
            script.as_str(),
            "--jwks-url",
            jwks_url.as_str(),
            "--issuer",
            issuer,
            "--audience",
            audience,
            "--token-file",
            &token_file.display().to_string(),
        ])
    };
    let out = verify(WORKLOAD_AUDIENCE);
    out.assert_success();
    let verified: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(verified["sandbox_id"], env.sandbox_id.as_str());
    let out = verify("https://allowed.test");
    assert!(!out.success(), "the example accepted a foreign audience");
    assert!(
        out.stderr.contains("invalid workload token"),
        "{}",
        out.stderr
    );

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

    // 3. The JWT (10 s) is refreshed under traffic, three times; no request fails across
    // any refresh and no refresh fails.
    let refreshed = r#"palisade_sidecar_jwt_refreshes_total{outcome="refreshed"}"#;
    let failed = r#"palisade_sidecar_jwt_refreshes_total{outcome="failed"}"#;
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
        env.metric(refreshed) >= before + 3.0
    });
    assert!(ok, "three JWT refreshes not observed: {}", env.logs());
    assert_eq!(env.metric(failed), 0.0, "{}", env.logs());
    let (code, _) = env.curl("https://allowed.test/after-refresh");
    assert_eq!(code, "200");
    assert_eq!(
        env.upstream_auth("/after-refresh").as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );

    // 4. Gateway killed (just after a refresh, so the JWT has most of its 10 s left):
    // the cached policy and credentials keep working.
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

    // 5. Restart once the JWT has expired during the outage: the sidecar refreshes the
    // expired JWT (within the gateway's leeway), the session reconnects and updates flow.
    let expired = wait_until(Duration::from_secs(30), || {
        let exp = env.metric("palisade_sidecar_jwt_expiry_seconds");
        exp > 0.0 && exp < unix_now()
    });
    assert!(expired, "the JWT did not expire during the outage");
    // Same data dir: same keys, same store.
    env.gateway.restart(&env.topo, START).unwrap();
    assert!(
        wait_until(Duration::from_secs(90), || env.metric(
            r#"palisade_sidecar_gateway_session_state{state="connected"}"#
        ) == 1.0),
        "the session did not reconnect: {}",
        env.logs()
    );
    assert!(env.metric("palisade_sidecar_gateway_session_reconnects_total") >= 1.0);
    assert!(
        wait_until(Duration::from_secs(30), || env
            .metric("palisade_sidecar_jwt_expiry_seconds")
            > unix_now()),
        "no fresh JWT after the reconnect: {}",
        env.logs()
    );
    assert_eq!(
        env.metric(r#"palisade_sidecar_jwt_refreshes_total{outcome="rebootstrap_impossible"}"#),
        0.0,
        "the expired JWT was not refreshed: {}",
        env.logs()
    );
    let (code, body) = env.curl("https://allowed.test/after-outage");
    assert_eq!(code, "200", "{body}\n{}", env.logs());
    assert_eq!(
        env.upstream_auth("/after-outage").as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
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
    // Every source stops, also the workload token the sidecar still has cached.
    let (code, body) = env.curl("https://other.test/wl-gone");
    assert_eq!(code, "502", "{body}");
    assert!(body.contains("credential_unavailable"), "{body}");
    assert!(
        env.upstream_auth("/wl-gone").is_none(),
        "forwarded after revocation"
    );
    assert!(
        env.metric(r#"palisade_sidecar_jwt_refreshes_total{outcome="rebootstrap_impossible"}"#)
            >= 1.0
    );
    assert_eq!(env.metric("palisade_sidecar_jwt_expiry_seconds"), 0.0);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
