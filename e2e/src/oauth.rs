//! A fake OAuth 2.0 token endpoint for SPIFFE token grants.
//!
//! Serves `POST /oauth/token` over HTTPS (a fresh rcgen test CA; leaf for `localhost` and
//! `127.0.0.1`, or the names given to [`FakeTokenEndpoint::start_https_on`]) or plain HTTP,
//! on loopback or on a listener the caller bound (e.g. inside a test network namespace with
//! [`crate::netns_socket::tcp_listener_in`]). It accepts RFC 7523 client assertions
//! (`grant_type=client_credentials`, `client_assertion_type=…jwt-bearer`) and RFC 8693 token
//! exchanges (`subject_token_type=…:jwt`), verifies the JWT-SVID's ES256 signature against the
//! JWT bundle (JWKS) it was given, its `aud` and `exp`, and issues a token that differs per
//! grant, audience and scope. [`Behaviour`] makes it misbehave on purpose.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use tokio::net::TcpListener;

pub const TOKEN_PATH: &str = "/oauth/token";

/// How the endpoint answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Verify and issue.
    Normal,
    /// Read the request, never answer.
    Hang,
    /// `302 Found` to another path.
    Redirect,
    /// Issue a token containing `\r\n` (header injection attempt).
    CrlfToken,
    /// Issue a token with a space and `"` (not token68).
    NonToken68,
    /// `400 {"error": "invalid_grant", "error_description": …}` where the description echoes
    /// the presented assertion and contains control characters.
    OAuthError,
}

/// One issued token, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub grant: String,
    pub audience: Option<String>,
    pub scope: Option<String>,
    pub token: String,
}

struct State {
    jwks: JwkSet,
    expected_svid_audience: String,
    behaviour: Mutex<Behaviour>,
    expires_in: AtomicU64,
    requests: AtomicUsize,
    issued: Mutex<Vec<Issued>>,
    rejected: Mutex<Vec<String>>,
}

/// The running endpoint; stops when dropped.
pub struct FakeTokenEndpoint {
    addr: SocketAddr,
    https: bool,
    ca_der: Option<Vec<u8>>,
    ca_pem: Option<String>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeTokenEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTokenEndpoint")
            .field("addr", &self.addr)
            .field("https", &self.https)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeTokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeTokenEndpoint {
    /// HTTPS on 127.0.0.1 with a fresh test CA ([`Self::root_store`]). SVIDs must carry
    /// `svid_audience` and verify against `jwks` (the SPIFFE JWT bundle).
    pub async fn start_https(
        jwks: &serde_json::Value,
        svid_audience: &str,
    ) -> anyhow::Result<Self> {
        Self::start(jwks, svid_audience, true).await
    }

    /// Plain HTTP on 127.0.0.1.
    pub async fn start_http(jwks: &serde_json::Value, svid_audience: &str) -> anyhow::Result<Self> {
        Self::start(jwks, svid_audience, false).await
    }

    /// HTTPS on `listener` (already bound, e.g. in another network namespace) with a leaf
    /// certificate for `names` (DNS names or IP literals) from a fresh test CA
    /// ([`Self::ca_pem`]).
    pub async fn start_https_on(
        listener: std::net::TcpListener,
        names: &[&str],
        jwks: &serde_json::Value,
        svid_audience: &str,
    ) -> anyhow::Result<Self> {
        Self::start_on(listener, Some(names), jwks, svid_audience)
    }

    /// Plain HTTP on `listener` (already bound).
    pub async fn start_http_on(
        listener: std::net::TcpListener,
        jwks: &serde_json::Value,
        svid_audience: &str,
    ) -> anyhow::Result<Self> {
        Self::start_on(listener, None, jwks, svid_audience)
    }

    async fn start(
        jwks: &serde_json::Value,
        svid_audience: &str,
        https: bool,
    ) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let names: &[&str] = &["localhost", "127.0.0.1"];
        Self::start_on(listener, https.then_some(names), jwks, svid_audience)
    }

    /// Serve on `listener` (needs a tokio runtime); `tls_names`: HTTPS with a leaf for them.
    fn start_on(
        listener: std::net::TcpListener,
        tls_names: Option<&[&str]>,
        jwks: &serde_json::Value,
        svid_audience: &str,
    ) -> anyhow::Result<Self> {
        let jwks: JwkSet = serde_json::from_value(jwks.clone()).context("bundle is not a JWKS")?;
        let state = Arc::new(State {
            jwks,
            expected_svid_audience: svid_audience.to_owned(),
            behaviour: Mutex::new(Behaviour::Normal),
            expires_in: AtomicU64::new(300),
            requests: AtomicUsize::new(0),
            issued: Mutex::new(Vec::new()),
            rejected: Mutex::new(Vec::new()),
        });
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let (acceptor, ca_der, ca_pem) = match tls_names {
            Some(names) => {
                let (acceptor, der, pem) = tls_acceptor(names)?;
                (Some(acceptor), Some(der), Some(pem))
            }
            None => (None, None, None),
        };
        let task = tokio::spawn(serve(listener, acceptor, state.clone()));
        Ok(Self {
            addr,
            https: tls_names.is_some(),
            ca_der,
            ca_pem,
            state,
            task,
        })
    }

    /// `https://localhost:PORT/oauth/token` (or `http://127.0.0.1:PORT/…`).
    pub fn url(&self) -> String {
        if self.https {
            format!("https://localhost:{}{TOKEN_PATH}", self.addr.port())
        } else {
            format!("http://127.0.0.1:{}{TOKEN_PATH}", self.addr.port())
        }
    }

    /// `https://HOST:PORT/oauth/token` (or `http://…`) for a name that resolves to the
    /// listener's address.
    pub fn url_for(&self, host: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{host}:{}{TOKEN_PATH}", self.addr.port())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The test CA that signed the leaf, PEM (`None` for plain HTTP): give it to the client
    /// (the sidecar's `--upstream-ca`).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Roots that trust this endpoint's certificate (empty for plain HTTP).
    pub fn root_store(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(der) = &self.ca_der {
            roots.add(rustls_pki_types::CertificateDer::from(der.clone()))?;
        }
        Ok(roots)
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.state.behaviour.lock() = b;
    }

    /// `expires_in` of tokens issued from now on.
    pub fn set_expires_in(&self, seconds: u64) {
        self.state.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// Requests received on the token path (any outcome).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Tokens issued (after successful verification), oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        self.state.issued.lock().clone()
    }

    /// Why requests were refused (verification failures), oldest first.
    pub fn rejected(&self) -> Vec<String> {
        self.state.rejected.lock().clone()
    }
}

fn tls_acceptor(names: &[&str]) -> anyhow::Result<(tokio_rustls::TlsAcceptor, Vec<u8>, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "palisade fake oauth test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate()?;
    let mut leaf_params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    leaf_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("localhost"),
    );
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )?;
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca.der().to_vec(),
        ca.pem(),
    ))
}

async fn serve(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                }
            }
        });
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

async fn handle(
    state: Arc<State>,
    req: http::Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != http::Method::POST || req.uri().path() != TOKEN_PATH {
        return oauth_error(StatusCode::NOT_FOUND, "not_found", "POST /oauth/token");
    }
    let form_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "bad body"),
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    let form = parse_form(&body);
    let behaviour = *state.behaviour.lock();
    match behaviour {
        Behaviour::Hang => {
            std::future::pending::<()>().await;
        }
        Behaviour::Redirect => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::FOUND;
            resp.headers_mut().insert(
                http::header::LOCATION,
                http::HeaderValue::from_static("/elsewhere/token"),
            );
            return resp;
        }
        Behaviour::OAuthError => {
            let presented = form
                .get("client_assertion")
                .or_else(|| form.get("subject_token"))
                .cloned()
                .unwrap_or_default();
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant\u{7}",
                &format!("assertion {presented} rejected\r\nX-Injected: yes\u{1b}[31m"),
            );
        }
        _ => {}
    }
    let (grant, svid) = match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return reject(
                    &state,
                    "invalid_client",
                    "client_assertion_type is not jwt-bearer",
                );
            }
            ("client_credentials", form.get("client_assertion"))
        }
        Some("urn:ietf:params:oauth:grant-type:token-exchange") => {
            if form.get("subject_token_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:token-type:jwt")
            {
                return reject(&state, "invalid_request", "subject_token_type is not jwt");
            }
            ("token_exchange", form.get("subject_token"))
        }
        _ => return reject(&state, "unsupported_grant_type", "unknown grant_type"),
    };
    let Some(svid) = svid else {
        return reject(&state, "invalid_request", "no assertion / subject_token");
    };
    if let Err(why) = verify(&state, svid) {
        return reject(&state, "invalid_client", &why);
    }
    let audience = form.get("audience").cloned();
    let scope = form.get("scope").cloned();
    let n = state.issued.lock().len();
    let base = format!(
        "{grant}.{}.{}.{n}",
        audience.as_deref().unwrap_or("-"),
        scope.as_deref().unwrap_or("-").replace(' ', "+")
    );
    let token = match behaviour {
        Behaviour::CrlfToken => format!("at-{base}\r\nX-Injected: yes"),
        Behaviour::NonToken68 => format!("at {base} \"quoted\""),
        _ => format!("at-{base}"),
    };
    state.issued.lock().push(Issued {
        grant: grant.to_owned(),
        audience,
        scope,
        token: token.clone(),
    });
    let mut body = serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": state.expires_in.load(Ordering::SeqCst),
    });
    if grant == "token_exchange" {
        body["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token".into();
    }
    json(StatusCode::OK, body)
}

fn reject(state: &State, error: &str, why: &str) -> Response<Full<Bytes>> {
    state.rejected.lock().push(format!("{error}: {why}"));
    oauth_error(StatusCode::UNAUTHORIZED, error, why)
}

/// Signature against the bundle (by `kid`), `aud`, `exp`, and a SPIFFE `sub`.
fn verify(state: &State, svid: &str) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(svid).map_err(|e| format!("bad JWT header: {e}"))?;
    let kid = header.kid.ok_or("the SVID has no kid")?;
    let jwk = state
        .jwks
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} is not in the trust bundle"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable bundle key: {e}"))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[state.expected_svid_audience.as_str()]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<serde_json::Value>(svid, &key, &validation)
        .map_err(|e| format!("SVID rejected: {e}"))?;
    let sub = data.claims["sub"].as_str().unwrap_or("");
    if !sub.starts_with("spiffe://") {
        return Err(format!("sub `{sub}` is not a SPIFFE ID"));
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` → map (last value wins).
pub fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in body.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let mut it = pair.splitn(2, |b| *b == b'=');
        let k = decode(it.next().unwrap_or_default());
        let v = decode(it.next().unwrap_or_default());
        out.insert(k, v);
    }
    out
}

fn decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let hex = std::str::from_utf8(&s[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
