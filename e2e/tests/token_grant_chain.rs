//! SPIFFE token grants through the full chain: the real gateway binary (embedded store) in
//! the "internet" namespace; a sandbox registered and a policy with `tokenGrant` credentials
//! put through its API; the real sidecar (UID 1337) bootstraps with the one-time token and
//! gets the policy over the session; the agent's curl (UID 1000) reaches nginx.
//!
//! The token grants' other side runs in this test process: a fake SPIFFE Workload API on a
//! unix socket only UID 1337 may open (a sidecar-only mount), and a fake OAuth token endpoint
//! (HTTPS, its own test CA, leaf `oauth.test`) whose listener was bound inside the internet
//! namespace, so the sidecar reaches it like any upstream. The sidecar's UID is exempt from
//! the redirect and the fence, resolves `oauth.test` with the pod's resolver (dnsmasq) and
//! trusts the fake's CA through `--upstream-ca`.
//!
//! Shown: per-endpoint audiences and scopes (nginx sees the very token the endpoint issued
//! for each), cache hits on repeats, the SVID coming from the Workload API; a hanging token
//! endpoint → 502 after the client timeout; redirect / CRLF / non-token68 answers → 502,
//! counted; a plain-http token endpoint refused (at policy load, by the gateway); a request
//! outside a secret's binding → 403 `credential_endpoint_mismatch` (reachable in audit mode
//! only). No request ever reaches nginx without its credential.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_e2e::bins::sidecar_argv;
use palisade_e2e::chain::{
    Gateway, SidecarFiles, agent_curl, chown, create_sandbox, metric_value, set_mode,
    sidecar_metrics,
};
use palisade_e2e::netns_socket::tcp_listener_in;
use palisade_e2e::oauth::{Behaviour, FakeTokenEndpoint, Issued};
use palisade_e2e::process::as_sidecar;
use palisade_e2e::spiffe::FakeWorkloadApi;
use palisade_e2e::*;

const START: Duration = Duration::from_secs(60);
/// Where the fake token endpoint listens (HTTPS) and the name its certificate carries.
const OAUTH_HOST: &str = "oauth.test";
const OAUTH_PORT: u16 = 8443;
/// A plain-HTTP token endpoint on the same name (must never be used).
const PLAIN_PORT: u16 = 8080;
/// Audience of the JWT-SVIDs the sidecar presents (the fake endpoint insists on it).
const SVID_AUDIENCE: &str = "oauth.test";
/// Upstream hosts (all nginx): two under one grant, one token exchange, one misbehaving
/// grant, one with a gateway secret bound to `/v1/**`.
const HOSTS: &[&str] = &[
    "api.test",
    "files.test",
    "exch.test",
    "flaky.test",
    "bound.test",
];
/// The gateway-held secret of `bound.test` (token68).
const SECRET: &str = "bound-s3cr3t.T0ken_for~e2e";
/// Generous cap for the agent's curl: above the sidecar's 15 s token-grant timeout.
const CURL_MAX_SECS: u32 = 60;
/// The sidecar's total token-grant timeout (`DEFAULT_TIMEOUT` in token_grant/client.rs).
const GRANT_TIMEOUT_TEXT: &str = "15s";

fn policy(mode: &str, token_endpoint: &str) -> String {
    format!(
        r#"apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {{name: grants}}
spec:
  mode: {mode}
  credentials:
    api:
      from:
        tokenGrant:
          tokenEndpoint: "{token_endpoint}"
          grant: clientCredentials
          svidAudience: {SVID_AUDIENCE}
          audience: api.test
          scopes: [read]
          overrides:
            - {{host: files.test, audience: files.test, scopes: [files.read, files.list]}}
            - {{host: api.test, path: /admin, audience: api-admin, scopes: [admin]}}
            - {{host: api.test, path: /burst, audience: api-burst}}
    xchg:
      from:
        tokenGrant:
          tokenEndpoint: "{token_endpoint}"
          grant: tokenExchange
          svidAudience: {SVID_AUDIENCE}
          audience: exch.test
    flaky:
      from:
        tokenGrant:
          tokenEndpoint: "{token_endpoint}"
          grant: clientCredentials
          svidAudience: {SVID_AUDIENCE}
          audience: flaky
          overrides:
            - {{host: flaky.test, path: /hang, audience: flaky-hang}}
            - {{host: flaky.test, path: /redirect, audience: flaky-redirect}}
            - {{host: flaky.test, path: /crlf, audience: flaky-crlf}}
            - {{host: flaky.test, path: /nt68, audience: flaky-nt68}}
    static:
      from: {{secret: {{name: bound-secret, key: token}}}}
  egress:
    - name: apis
      hosts: [api.test, files.test]
      ports: [443]
      allowedCidrs: ["fd00::/8"]
      credential: api
      http:
        allow:
          - {{methods: [GET], path: "/**"}}
    - name: exchange
      hosts: [exch.test]
      ports: [443]
      allowedCidrs: ["fd00::/8"]
      credential: xchg
      http:
        allow:
          - {{methods: [GET], path: "/**"}}
    - name: flaky
      hosts: [flaky.test]
      ports: [443]
      allowedCidrs: ["fd00::/8"]
      credential: flaky
      http:
        allow:
          - {{methods: [GET], path: "/**"}}
    - name: bound
      hosts: [bound.test]
      ports: [443]
      allowedCidrs: ["fd00::/8"]
      credential: static
      http:
        allow:
          - {{methods: [GET], path: "/v1/**"}}
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

/// Connect to a unix socket as `uid` with python; prints `CONNECTED` or the errno name.
fn unix_connect_as(topo: &Topology, uid: u32, socket: &Path) -> String {
    let script = "import errno, socket, sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  try:\n    s.connect(sys.argv[1]); print('CONNECTED')\n\
                  except OSError as e:\n    print(errno.errorcode.get(e.errno, e.errno))\n";
    let sock = socket.display().to_string();
    let out = topo
        .pod
        .run(as_uid(uid, uid, &[PYTHON, "-c", script, sock.as_str()]));
    format!("{}{}", out.stdout.trim(), out.stderr.trim())
}

struct Env {
    sidecar: Proc,
    nginx: Nginx,
    dns: Dnsmasq,
    gateway: Gateway,
    spire: FakeWorkloadApi,
    oauth: FakeTokenEndpoint,
    plain: FakeTokenEndpoint,
    spire_socket: PathBuf,
    shared: PathBuf,
    topo: Topology,
}

impl Env {
    fn start(rt: &tokio::runtime::Runtime) -> Env {
        let topo = Topology::new().unwrap();
        let nginx = Nginx::start(&topo, HOSTS).unwrap();
        let oauth_ip = topo.upstream_v4(3);
        let mut records: Vec<DnsRecord> = HOSTS
            .iter()
            .map(|h| {
                DnsRecord::new(
                    h,
                    &[
                        IpAddr::V4(topo.upstream_v4(1)),
                        IpAddr::V6(topo.upstream_v6(1)),
                    ],
                )
            })
            .collect();
        records.push(DnsRecord::new(OAUTH_HOST, &[IpAddr::V4(oauth_ip)]));
        let dns = Dnsmasq::start(&topo, &records).unwrap();
        topo.pod
            .run(sidecar_argv(&["init", "--backend", "iptables"]))
            .assert_success();
        let work = topo.pod.workdir().to_path_buf();
        set_mode(&work, 0o755).unwrap();

        // The Workload API: a socket in a 0700 directory, both owned by UID 1337 — what a
        // sidecar-only mount of the SPIRE agent socket looks like.
        let spire_dir = work.join("spire");
        std::fs::create_dir_all(&spire_dir).unwrap();
        let spire_socket = spire_dir.join("agent.sock");
        let spire = rt
            .block_on(FakeWorkloadApi::start_at(&spire_socket))
            .unwrap();
        chown(&spire_socket, SIDECAR_UID).unwrap();
        set_mode(&spire_socket, 0o600).unwrap();
        chown(&spire_dir, SIDECAR_UID).unwrap();
        set_mode(&spire_dir, 0o700).unwrap();

        // The token endpoints, listening inside the internet namespace.
        let jwks = spire.jwks();
        let listener =
            tcp_listener_in(&topo.internet, SocketAddr::new(oauth_ip.into(), OAUTH_PORT)).unwrap();
        let oauth = rt
            .block_on(FakeTokenEndpoint::start_https_on(
                listener,
                &[OAUTH_HOST],
                &jwks,
                SVID_AUDIENCE,
            ))
            .unwrap();
        let listener =
            tcp_listener_in(&topo.internet, SocketAddr::new(oauth_ip.into(), PLAIN_PORT)).unwrap();
        let plain = rt
            .block_on(FakeTokenEndpoint::start_http_on(
                listener,
                &jwks,
                SVID_AUDIENCE,
            ))
            .unwrap();

        // The sidecar trusts nginx's CA and the token endpoint's.
        let upstream_ca = work.join("upstream-ca.pem");
        let mut bundle = std::fs::read_to_string(&nginx.pki.ca_cert).unwrap();
        bundle.push_str(oauth.ca_pem().unwrap());
        std::fs::write(&upstream_ca, bundle).unwrap();
        set_mode(&upstream_ca, 0o644).unwrap();

        let gwdir = work.join("gateway");
        std::fs::create_dir_all(&gwdir).unwrap();
        set_mode(&gwdir, 0o700).unwrap();
        let gateway = Gateway::start(&topo, &gwdir, START).unwrap();
        // Allowed for the cluster-wide policy `grants`, sent only to bound.test:443.
        let secret = serde_json::json!({
            "data": {"token": SECRET},
            "allowedPolicies": ["grants"],
            "allowedHosts": ["bound.test:443"],
        })
        .to_string();
        let (code, body) = gateway.api(&topo, "PUT", "/v1/secrets/bound-secret", Some(&secret));
        assert!((200..300).contains(&code), "PUT secret: {code} {body}");
        let doc = policy("enforce", &oauth.url_for(OAUTH_HOST));
        let (code, body) = gateway.api(&topo, "PUT", "/v1/policies/grants", Some(&doc));
        assert!((200..300).contains(&code), "PUT policy: {code} {body}");
        let (sandbox_id, bootstrap) =
            create_sandbox(&gateway, &topo, "grant-e2e", "grants").unwrap();
        let files = SidecarFiles::prepare(&work, &bootstrap).unwrap();
        let spire_uri = format!("unix:{}", spire_socket.display());
        let argv = files.run_argv(
            &gateway,
            &sandbox_id,
            &upstream_ca,
            &["--spiffe-endpoint-socket", &spire_uri],
        );
        let sidecar = topo.pod.spawn(as_sidecar(&argv)).unwrap();
        let env = Env {
            sidecar,
            nginx,
            dns,
            gateway,
            spire,
            oauth,
            plain,
            spire_socket,
            shared: files.shared.clone(),
            topo,
        };
        assert!(
            wait_until(START, || files.ready.exists()),
            "sidecar did not become ready: {}\n--- gateway ---\n{}",
            env.sidecar.describe(),
            env.gateway.logs()
        );
        env
    }

    /// The agent's curl trusting only the published bundle: (status, body).
    fn curl(&self, url: &str) -> (String, String) {
        agent_curl(
            &self.topo,
            &self.shared.join("ca-bundle.pem"),
            url,
            CURL_MAX_SECS,
        )
    }

    /// A request that must succeed.
    #[track_caller]
    fn ok(&self, url: &str) {
        let (code, body) = self.curl(url);
        assert_eq!(code, "200", "{url}: {body}\n{}", self.logs());
    }

    /// A request that must be refused with `status` and JSON `error`; returns the body.
    #[track_caller]
    fn refused(&self, url: &str, status: &str, error: &str) -> serde_json::Value {
        let (code, body) = self.curl(url);
        assert_eq!(code, status, "{url}: {body}\n{}", self.logs());
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{url}: the {status} body is not JSON ({e}): {body}"));
        assert_eq!(json["error"], error, "{url}: {json}");
        eprintln!("{url} → {status} {json}");
        json
    }

    fn metric(&self, series: &str) -> f64 {
        metric_value(&sidecar_metrics(&self.topo), series)
    }

    /// The Authorization header nginx saw on its most recent request for `uri`.
    fn upstream_auth(&self, uri: &str) -> Option<String> {
        self.nginx.authorization_for(uri)
    }

    /// Whether nginx saw any request whose URI starts with `prefix`.
    fn upstream_saw(&self, prefix: &str) -> bool {
        self.nginx
            .requests()
            .iter()
            .any(|r| r["uri"].as_str().is_some_and(|u| u.starts_with(prefix)))
    }

    /// The one token the endpoint issued for `audience` (asserting there is exactly one).
    #[track_caller]
    fn issued_for(&self, audience: &str) -> Issued {
        let all: Vec<Issued> = self
            .oauth
            .issued()
            .into_iter()
            .filter(|i| i.audience.as_deref() == Some(audience))
            .collect();
        assert_eq!(all.len(), 1, "tokens issued for {audience}: {all:?}");
        all.into_iter().next().unwrap()
    }

    fn logs(&self) -> String {
        self.sidecar.stderr()
    }
}

fn requests(grant: &str, outcome: &str) -> String {
    format!(r#"palisade_sidecar_token_grant_requests_total{{grant="{grant}",outcome="{outcome}"}}"#)
}

const CACHE_HIT: &str = r#"palisade_sidecar_token_grant_cache_total{result="hit"}"#;

#[test]
fn token_grants_through_the_full_chain() {
    if !prereq() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = Env::start(&rt);

    // The Workload API socket: UID 1337 may connect, the agent may not even reach it.
    assert_eq!(
        unix_connect_as(&env.topo, SIDECAR_UID, &env.spire_socket),
        "CONNECTED"
    );
    assert_eq!(
        unix_connect_as(&env.topo, AGENT_UID, &env.spire_socket),
        "EACCES"
    );
    // Nor can the agent talk to the token endpoint itself (no rule names it).
    let before = env.oauth.requests();
    let (code, _) = env.curl(&env.oauth.url_for(OAUTH_HOST));
    assert_ne!(code, "200");
    assert_eq!(env.oauth.requests(), before);

    // a. One grant, per-endpoint audiences and scopes; nginx gets exactly what was issued.
    let cases = [
        // (url, uri, grant, audience, scope)
        (
            "https://api.test/v1/items",
            "/v1/items",
            "client_credentials",
            "api.test",
            Some("read"),
        ),
        (
            "https://files.test/f/1",
            "/f/1",
            "client_credentials",
            "files.test",
            Some("files.read files.list"),
        ),
        (
            "https://api.test/admin/users",
            "/admin/users",
            "client_credentials",
            "api-admin",
            Some("admin"),
        ),
        (
            "https://exch.test/x",
            "/x",
            "token_exchange",
            "exch.test",
            None,
        ),
    ];
    for (url, uri, grant, audience, scope) in cases {
        env.ok(url);
        let issued = env.issued_for(audience);
        assert_eq!(issued.grant, grant);
        assert_eq!(issued.scope.as_deref(), scope, "{issued:?}");
        assert_eq!(
            env.upstream_auth(uri),
            Some(format!("Bearer {}", issued.token)),
            "{url}"
        );
    }
    let tokens: Vec<String> = env.oauth.issued().into_iter().map(|i| i.token).collect();
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    let distinct: std::collections::BTreeSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), 4, "distinct tokens per audience/scope");
    assert!(
        env.oauth.rejected().is_empty(),
        "{:?}",
        env.oauth.rejected()
    );
    // Each exchange presented an SVID fetched from the fake Workload API (the endpoint
    // verified it against that API's bundle before issuing).
    assert_eq!(env.spire.svid_calls(), 4);
    assert_eq!(env.spire.refused_calls(), 0);
    // The sidecar resolved the token endpoint with the pod's resolver (dnsmasq): the policy
    // DNS never forwards `oauth.test`, which no rule names.
    let asked = format!("query[A] {OAUTH_HOST} from {}", env.topo.pod_v4());
    assert!(env.dns.queries().contains(&asked), "{}", env.dns.queries());
    assert_eq!(env.metric(&requests("client_credentials", "ok")), 3.0);
    assert_eq!(env.metric(&requests("token_exchange", "ok")), 1.0);

    // Repeats are cache hits: no new exchange, same tokens upstream. `/administrator` is not
    // under the `/admin` override (segment boundary): the grant's own token.
    let hits = env.metric(CACHE_HIT);
    for (url, uri, audience) in [
        ("https://api.test/v1/again", "/v1/again", "api.test"),
        ("https://files.test/f/2", "/f/2", "files.test"),
        ("https://api.test/admin/again", "/admin/again", "api-admin"),
        (
            "https://api.test/administrator",
            "/administrator",
            "api.test",
        ),
        ("https://exch.test/y", "/y", "exch.test"),
    ] {
        env.ok(url);
        let issued = env.issued_for(audience);
        assert_eq!(
            env.upstream_auth(uri),
            Some(format!("Bearer {}", issued.token))
        );
    }
    assert_eq!(env.oauth.issued().len(), 4, "a repeat caused an exchange");
    assert_eq!(env.spire.svid_calls(), 4);
    assert_eq!(env.metric(CACHE_HIT) - hits, 5.0);

    // Concurrent first requests for one new token: one exchange (single-flight or cache).
    let miss = env.metric(r#"palisade_sidecar_token_grant_cache_total{result="miss"}"#);
    std::thread::scope(|scope| {
        let env = &env;
        for i in 0..8 {
            scope.spawn(move || env.ok(&format!("https://api.test/burst/{i}")));
        }
    });
    let burst = env.issued_for("api-burst");
    assert_eq!(
        burst.scope.as_deref(),
        Some("read"),
        "scopes kept from the grant"
    );
    for i in 0..8 {
        assert_eq!(
            env.upstream_auth(&format!("/burst/{i}")),
            Some(format!("Bearer {}", burst.token))
        );
    }
    assert_eq!(
        env.metric(r#"palisade_sidecar_token_grant_cache_total{result="miss"}"#) - miss,
        1.0
    );

    // b. The token endpoint hangs: 502 with a JSON reason once the sidecar's exchange timeout
    // fires; nginx never sees the request.
    env.oauth.set_behaviour(Behaviour::Hang);
    let body = env.refused("https://flaky.test/hang/1", "502", "credential_unavailable");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains(GRANT_TIMEOUT_TEXT) && reason.contains("flaky"),
        "{reason}"
    );
    assert_eq!(env.metric(&requests("client_credentials", "timeout")), 1.0);
    assert!(!env.upstream_saw("/hang"));

    // c. Answers the sidecar refuses: each 502 with its reason, nothing forwarded, counted.
    for (behaviour, path, outcome, says) in [
        (Behaviour::Redirect, "/redirect/1", "redirect", "redirect"),
        (Behaviour::CrlfToken, "/crlf/1", "invalid_token", "token68"),
        (Behaviour::NonToken68, "/nt68/1", "invalid_token", "token68"),
    ] {
        let before = env.metric(&requests("client_credentials", outcome));
        env.oauth.set_behaviour(behaviour);
        let body = env.refused(
            &format!("https://flaky.test{path}"),
            "502",
            "credential_unavailable",
        );
        let reason = body["reason"].as_str().unwrap();
        assert!(
            reason.contains(says),
            "{behaviour:?}: {reason}\ndnsmasq:\n{}",
            env.dns.queries()
        );
        assert_eq!(
            env.metric(&requests("client_credentials", outcome)) - before,
            1.0,
            "{behaviour:?}"
        );
        assert!(!env.upstream_saw(path), "{behaviour:?} forwarded");
    }
    // Failures are not cached: with the endpoint healthy again the same request works.
    env.oauth.set_behaviour(Behaviour::Normal);
    env.ok("https://flaky.test/hang/2");
    let issued = env.issued_for("flaky-hang");
    assert_eq!(
        env.upstream_auth("/hang/2"),
        Some(format!("Bearer {}", issued.token))
    );
    // No token (good or refused) in the sidecar's log.
    let logs = env.logs();
    for issued in env.oauth.issued() {
        for piece in issued.token.split_whitespace() {
            assert!(
                piece.len() < 12 || !logs.contains(piece),
                "the sidecar logged a token piece {piece:?}"
            );
        }
    }
    assert!(!logs.contains("eyJ"), "an SVID in the sidecar log");

    // A plain-http token endpoint (not loopback, not *.svc) never reaches the sidecar: the
    // gateway refuses the policy at load, and the sidecar keeps enforcing the last good one.
    let doc = policy("enforce", &env.plain.url_for(OAUTH_HOST));
    let (code, body) = env
        .gateway
        .api(&env.topo, "PUT", "/v1/policies/grants", Some(&doc));
    eprintln!(
        "PUT policy with {} → {code} {body}",
        env.plain.url_for(OAUTH_HOST)
    );
    assert_eq!(code, 422, "plain-http policy: {body}");
    let refusal: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["error"], "invalid_policy", "{refusal}");
    let errors = refusal["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "one per tokenGrant: {refusal}");
    for e in errors {
        assert!(
            e["path"]
                .as_str()
                .unwrap()
                .ends_with("tokenGrant.tokenEndpoint")
                && e["message"].as_str().unwrap().contains("uses http"),
            "{e}"
        );
    }
    env.ok("https://api.test/v1/still");
    assert_eq!(env.plain.requests(), 0);
    assert_eq!(
        env.metric(&requests("client_credentials", "refused_endpoint")),
        0.0
    );

    // d. Credential bindings. In enforce mode a path outside the rule is a policy denial
    // before any binding check; in audit mode the request passes the rules, and the secret's
    // binding (the rule's allowed paths) refuses it: 403 credential_endpoint_mismatch.
    env.ok("https://bound.test/v1/a");
    assert_eq!(env.upstream_auth("/v1/a"), Some(format!("Bearer {SECRET}")));
    env.refused("https://bound.test/other", "403", "policy_denied");
    let doc = policy("audit", &env.oauth.url_for(OAUTH_HOST));
    let (code, body) = env
        .gateway
        .api(&env.topo, "PUT", "/v1/policies/grants", Some(&doc));
    assert!((200..300).contains(&code), "audit policy: {code} {body}");
    assert!(
        wait_until(Duration::from_secs(30), || {
            env.curl("https://bound.test/other")
                .1
                .contains("credential_endpoint_mismatch")
        }),
        "the audit-mode policy did not arrive: {}",
        env.logs()
    );
    let body = env.refused(
        "https://bound.test/other",
        "403",
        "credential_endpoint_mismatch",
    );
    assert!(
        body["reason"].as_str().unwrap().contains("static"),
        "{body}"
    );
    assert!(!env.upstream_saw("/other"));
    env.ok("https://bound.test/v1/b");
    assert_eq!(env.upstream_auth("/v1/b"), Some(format!("Bearer {SECRET}")));
    assert!(
        !env.logs().contains(SECRET),
        "the sidecar logged the secret"
    );
}
