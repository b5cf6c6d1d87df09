//! In-process gateway for tests: real listeners on 127.0.0.1:0, real hyper
//! client over loopback, real keys and store in a temp dir.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use clap::Parser;
use http::Method;
use palisade_gateway::client::{Answer, GatewayClient};
use palisade_gateway::config::{Config, ServeArgs};
use palisade_gateway::server::{Running, start};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

#[derive(Debug, Parser)]
struct T {
    #[command(flatten)]
    args: ServeArgs,
}

pub fn write_admin_token(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("admin-token");
    std::fs::write(&p, format!("{ADMIN_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

pub fn config(data: &Path, extra: &[&str]) -> Config {
    let token = write_admin_token(data);
    let data_dir = data.join("data");
    let mut argv = vec![
        "t".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--admin-token-file".into(),
        token.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    if !extra.contains(&"--tls-cert") {
        argv.push("--insecure-plaintext".into());
    }
    Config::resolve(&T::try_parse_from(argv).unwrap().args).unwrap()
}

pub struct Gw {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl Gw {
    pub async fn start(extra: &[&str]) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let running = start(config(dir.path(), extra)).await.unwrap();
        Gw { running, dir }
    }

    pub fn client(&self, token: Option<&str>) -> GatewayClient {
        GatewayClient::new(
            &format!("http://{}", self.running.api_addr),
            token.map(str::to_owned),
            None,
        )
        .unwrap()
    }

    pub fn admin(&self) -> GatewayClient {
        self.client(Some(ADMIN_TOKEN))
    }

    pub async fn metrics(&self) -> String {
        let c =
            GatewayClient::new(&format!("http://{}", self.running.admin_addr), None, None).unwrap();
        let a = c
            .send(Method::GET, "/metrics", None, Bytes::new())
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        String::from_utf8(a.body.to_vec()).unwrap()
    }

    /// Create a sandbox; returns (id, bootstrap token).
    pub async fn create_sandbox(&self, policy: Option<&str>) -> (String, String) {
        self.create_sandbox_in(None, policy).await
    }

    /// Create a sandbox (as admin) in `namespace`; returns (id, bootstrap token).
    pub async fn create_sandbox_in(
        &self,
        namespace: Option<&str>,
        policy: Option<&str>,
    ) -> (String, String) {
        let mut spec = serde_json::json!({ "name": "demo" });
        if let Some(p) = policy {
            spec["policy"] = p.into();
        }
        if let Some(ns) = namespace {
            spec["namespace"] = ns.into();
        }
        let a = post_json(&self.admin(), "/v1/sandboxes", &spec).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        let v = a.json().unwrap();
        (
            v["sandbox"]["id"].as_str().unwrap().to_owned(),
            v["bootstrapToken"].as_str().unwrap().to_owned(),
        )
    }

    /// Create a sandbox and exchange its bootstrap token; returns (id, jwt).
    pub async fn sandbox_with_token(&self, policy: Option<&str>) -> (String, String) {
        self.sandbox_with_token_in(None, policy).await
    }

    /// Create a sandbox in `namespace` and exchange its bootstrap token; returns (id, jwt).
    pub async fn sandbox_with_token_in(
        &self,
        namespace: Option<&str>,
        policy: Option<&str>,
    ) -> (String, String) {
        let (id, bootstrap) = self.create_sandbox_in(namespace, policy).await;
        let a = post(&self.client(Some(&bootstrap)), "/v1/token:issue").await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        (id, a.json().unwrap()["token"].as_str().unwrap().to_owned())
    }
}

pub async fn get(c: &GatewayClient, path: &str) -> Answer {
    c.send(Method::GET, path, None, Bytes::new()).await.unwrap()
}

pub async fn post(c: &GatewayClient, path: &str) -> Answer {
    c.send(Method::POST, path, None, Bytes::new())
        .await
        .unwrap()
}

pub async fn post_json(c: &GatewayClient, path: &str, v: &serde_json::Value) -> Answer {
    c.send(
        Method::POST,
        path,
        Some("application/json"),
        Bytes::from(serde_json::to_vec(v).unwrap()),
    )
    .await
    .unwrap()
}

pub async fn put(c: &GatewayClient, path: &str, body: &str) -> Answer {
    c.send(
        Method::PUT,
        path,
        Some("application/yaml"),
        Bytes::from(body.to_owned()),
    )
    .await
    .unwrap()
}

pub async fn delete(c: &GatewayClient, path: &str) -> Answer {
    c.send(Method::DELETE, path, None, Bytes::new())
        .await
        .unwrap()
}

/// Assert a JSON ErrorBody with this status and code.
pub fn assert_error(a: &Answer, status: u16, code: &str) -> palisade_api::ErrorBody {
    assert_eq!(
        a.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.headers.get("content-type").unwrap(),
        "application/json",
        "error bodies are JSON"
    );
    let body: palisade_api::ErrorBody = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(body.error, code, "{body:?}");
    body
}

/// The value of one sample line in a Prometheus scrape (exact label match).
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// One raw HTTP/1.1 connection to the gateway (upgrades enabled).
pub async fn connect(
    gw: &Gw,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(gw.running.api_addr)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// A bodiless request with a bearer token, optionally asking for an HTTP/1.1 upgrade.
pub fn request(
    method: Method,
    path: &str,
    token: &str,
    upgrade: Option<&str>,
) -> http::Request<http_body_util::Empty<Bytes>> {
    use http::header;
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "gateway")
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if let Some(protocol) = upgrade {
        b = b
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, protocol);
    }
    b.body(http_body_util::Empty::new()).unwrap()
}

/// `request(...)` sent on a fresh connection: the response.
pub async fn send(
    gw: &Gw,
    method: Method,
    path: &str,
    token: &str,
    upgrade: Option<&str>,
) -> http::Response<hyper::body::Incoming> {
    connect(gw)
        .await
        .send_request(request(method, path, token, upgrade))
        .await
        .unwrap()
}

/// The upgraded connection of a `101 Switching Protocols` answer (asserts the 101).
pub async fn upgraded(
    resp: http::Response<hyper::body::Incoming>,
) -> hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {
    assert_eq!(resp.status(), 101);
    hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap())
}

/// The next exec frame on an upgraded connection (60 s bound against hangs only).
pub async fn next_frame(
    io: &mut hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
) -> palisade_api::exec::Frame {
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        palisade_api::exec::read_frame(io),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap()
}

/// A fresh test CA and a server config for `localhost` / 127.0.0.1 signed by it, with
/// `alpn` offered: (config, the CA certificate as PEM for the client to trust).
pub fn localhost_tls(alpn: &[&[u8]]) -> (rustls::ServerConfig, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&server_key, &issuer).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
    )
    .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (tls, ca_cert.pem())
}

/// An OIDC issuer for tests: one Ed25519 key whose public half the gateway
/// reads from a PEM file (`--oidc-jwks-file`), tokens signed with real crypto.
pub struct Idp {
    encoding: jsonwebtoken::EncodingKey,
    pub pem_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub const IDP_ISSUER: &str = "https://idp.test";
pub const IDP_AUDIENCE: &str = "palisade";

impl Idp {
    pub fn new() -> Idp {
        use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let sk = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let der = sk.to_pkcs8_der().unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem_file = dir.path().join("idp.pem");
        std::fs::write(&pem_file, pem).unwrap();
        Idp {
            encoding: jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
            pem_file,
            _dir: dir,
        }
    }

    /// A gateway whose OIDC tokens become `kind` principals (`user` with the
    /// `roles` claim, or `platform` with the `namespaces` claim), admin token too.
    pub async fn gateway(&self, kind: &str, extra: &[&str]) -> Gw {
        let file = self.pem_file.display().to_string();
        let mut args = vec![
            "--oidc-issuer",
            IDP_ISSUER,
            "--oidc-audience",
            IDP_AUDIENCE,
            "--oidc-jwks-file",
            &file,
            "--oidc-principal",
            kind,
            "--oidc-roles-claim",
            "roles",
        ];
        args.extend_from_slice(extra);
        Gw::start(&args).await
    }

    pub fn token(&self, sub: &str, extra: serde_json::Value) -> String {
        let now = palisade_gateway::fsutil::now();
        let mut claims = serde_json::json!({
            "iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": sub,
            "iat": now, "nbf": now, "exp": now + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }

    /// A platform controller's token for these namespaces (a `platform` gateway).
    pub fn platform(&self, sub: &str, namespaces: &[&str]) -> String {
        self.token(sub, serde_json::json!({ "namespaces": namespaces }))
    }

    /// A user's token with these roles (a `user` gateway).
    pub fn user(&self, sub: &str, roles: &[&str]) -> String {
        self.token(sub, serde_json::json!({ "roles": roles }))
    }
}

/// `PUT /v1/secrets/{name}` as admin: one key `token` = `value`, and the allowance.
pub async fn put_secret_allowing(
    gw: &Gw,
    name: &str,
    value: &str,
    namespaces: &[&str],
    policies: &[&str],
    hosts: &[&str],
) -> Answer {
    let body = serde_json::json!({
        "data": { "token": value },
        "allowedNamespaces": namespaces,
        "allowedPolicies": policies,
        "allowedHosts": hosts,
    });
    gw.admin()
        .send(
            Method::PUT,
            &format!("/v1/secrets/{name}"),
            Some("application/json"),
            Bytes::from(serde_json::to_vec(&body).unwrap()),
        )
        .await
        .unwrap()
}

/// A session stream being read line by line.
pub struct Session {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Session {
    pub async fn open(gw: &Gw, id: &str, token: &str) -> http::Response<hyper::body::Incoming> {
        let mut c = connect(gw).await;
        c.send_request(request(
            Method::GET,
            &format!("/v1/sandboxes/{id}/session"),
            token,
            None,
        ))
        .await
        .unwrap()
    }

    pub async fn start(gw: &Gw, id: &str, token: &str) -> Session {
        let resp = Session::open(gw, id, token).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get(http::header::CONTENT_TYPE).unwrap(),
            "application/x-ndjson"
        );
        Session {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, heartbeats included; `None` at the end of the stream.
    pub async fn next_any(&mut self) -> Option<palisade_api::session::SessionEvent> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line[..line.len() - 1]).unwrap());
            }
            let frame = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                http_body_util::BodyExt::frame(&mut self.body),
            )
            .await
            .expect("session stream stalled")?;
            if let Ok(data) = frame.unwrap().into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next event that is not a heartbeat.
    pub async fn next(&mut self) -> palisade_api::session::SessionEvent {
        loop {
            match self.next_any().await.expect("session stream ended") {
                palisade_api::session::SessionEvent::Heartbeat { .. } => continue,
                e => return e,
            }
        }
    }
}

/// Every log line of the process, from the moment [`capture_logs`] installed it as the
/// global subscriber (one test per process: run with nextest).
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

/// Install a subscriber that writes every event at `level` and above into the returned
/// buffer. Panics if the process already has one.
pub fn capture_logs(level: tracing::Level) -> Captured {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("this test must own the process's log subscriber (run it with nextest)");
    logs
}
