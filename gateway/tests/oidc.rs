//! OIDC user/platform tokens against the real gateway, with a test double
//! for the issuer: an in-process HTTPS JWKS server (its own rcgen CA),
//! ES256 and Ed25519 keys made here, tokens signed with real crypto.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::*;

const ISS: &str = "https://idp.test";
const AUD: &str = "palisade";

/// A signing key of the fake issuer and its public JWK.
struct IdpKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn es256(kid: &str) -> IdpKey {
    let kp = rcgen::KeyPair::generate().unwrap(); // P-256
    let raw = kp.public_key_raw(); // 0x04 || x || y
    assert_eq!(raw.len(), 65);
    IdpKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        }),
    }
}

fn ed25519(kid: &str) -> (IdpKey, String) {
    let sk = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let der = sk.to_pkcs8_der().unwrap();
    let pem = sk
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    let key = IdpKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        jwk: json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes()),
        }),
    };
    (key, pem)
}

fn sign(key: &IdpKey, claims: &Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
}

fn claims(sub: &str, extra: Value) -> Value {
    let now = palisade_gateway::fsutil::now();
    let mut c =
        json!({ "iss": ISS, "aud": AUD, "sub": sub, "iat": now, "nbf": now, "exp": now + 600 });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// The fake issuer's JWKS endpoint over HTTPS.
#[derive(Clone)]
struct JwksServer {
    url: String,
    ca_pem: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let (tls, ca_pem) = localhost_tls(&[]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = JwksServer {
            url: format!("https://{}/keys", listener.local_addr().unwrap()),
            ca_pem,
            keys: Arc::new(Mutex::new(keys)),
            fetches: Arc::new(AtomicUsize::new(0)),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let s = s.clone();
                            async move {
                                let resp = if req.uri().path() == "/keys" {
                                    s.fetches.fetch_add(1, Ordering::SeqCst);
                                    let doc = json!({ "keys": *s.keys.lock() });
                                    Response::new(Full::new(Bytes::from(doc.to_string())))
                                } else {
                                    let mut r = Response::new(Full::new(Bytes::new()));
                                    *r.status_mut() = StatusCode::NOT_FOUND;
                                    r
                                };
                                Ok::<_, Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        server
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn gateway(jwks: &JwksServer, min_refresh: &str, extra: &[&str]) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("idp-ca.pem");
    std::fs::write(&ca, &jwks.ca_pem).unwrap();
    let ca = ca.display().to_string();
    let mut args = vec![
        "--oidc-issuer",
        ISS,
        "--oidc-audience",
        AUD,
        "--oidc-jwks-url",
        &jwks.url,
        "--oidc-jwks-ca-file",
        &ca,
        "--oidc-jwks-min-refresh-interval",
        min_refresh,
        "--oidc-jwks-refresh-interval",
        "1h",
    ];
    args.extend_from_slice(extra);
    let gw = Gw::start(&args).await;
    // Keep the CA file alive as long as the gateway's own temp dir.
    std::fs::copy(
        dir.path().join("idp-ca.pem"),
        gw.dir.path().join("idp-ca.pem"),
    )
    .unwrap();
    gw
}

fn failures(scrape: &str, reason: &str) -> f64 {
    sample(
        scrape,
        &format!(
            "palisade_gateway_auth_failures_total{{authenticator=\"oidc\",reason=\"{reason}\"}}"
        ),
    )
}

#[tokio::test]
async fn oidc_tokens_map_to_roles_and_every_bad_token_is_a_counted_401() {
    let key = es256("k1");
    let jwks = JwksServer::start(vec![key.jwk.clone()]).await;
    // Unknown kids never refetch here (1h), so the fetch count is exact.
    let gw = gateway(
        &jwks,
        "1h",
        &[
            "--oidc-roles-claim",
            "roles",
            "--oidc-group-role",
            "palisade-admins=admin,palisade-viewers=viewer",
        ],
    )
    .await;

    // Groups → roles.
    let admin = sign(
        &key,
        &claims("alice", json!({"groups": ["x", "palisade-admins"]})),
    );
    let a = get(&gw.client(Some(&admin)), "/v1/keys").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(jwks.fetches(), 1, "first use fetched the JWKS once");

    let viewer = sign(&key, &claims("bob", json!({"groups": "palisade-viewers"})));
    let v = gw.client(Some(&viewer));
    assert_eq!(get(&v, "/v1/sandboxes").await.status, 200);
    assert_error(
        &post_json(&v, "/v1/sandboxes", &json!({"name": "x"})).await,
        403,
        "forbidden",
    );
    assert_error(&get(&v, "/v1/keys").await, 403, "forbidden");

    // The roles claim names roles directly; unknown role names are ignored.
    let editor = sign(&key, &claims("carol", json!({"roles": ["editor", "root"]})));
    let e = gw.client(Some(&editor));
    let created = post_json(&e, "/v1/sandboxes", &json!({"name": "by-carol"})).await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.json().unwrap()["sandbox"]["owner"], "user:carol");
    assert_error(&get(&e, "/v1/keys").await, 403, "forbidden");

    // A valid token with no mapped role reaches nothing scoped.
    let nobody = sign(&key, &claims("dave", json!({"groups": ["other"]})));
    assert_error(
        &get(&gw.client(Some(&nobody)), "/v1/sandboxes").await,
        403,
        "forbidden",
    );

    // Every bad token: a JSON 401, counted by reason.
    let now = palisade_gateway::fsutil::now();
    let other_key = es256("k1"); // same kid, different key: forged
    let hs = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(
            &h,
            &claims("eve", json!({})),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap()
    };
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "k1"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims("eve", json!({})).to_string())
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "wrong_issuer",
            sign(&key, &claims("eve", json!({"iss": "https://idp.test/"}))),
        ),
        (
            "wrong_audience",
            sign(&key, &claims("eve", json!({"aud": "palisade-x"}))),
        ),
        (
            "wrong_audience",
            sign(&key, &claims("eve", json!({"aud": ["a", "b"]}))),
        ),
        (
            "expired",
            sign(&key, &claims("eve", json!({"exp": now - 120}))),
        ),
        (
            "not_yet_valid",
            sign(&key, &claims("eve", json!({"nbf": now + 600}))),
        ),
        ("invalid_claims", {
            let mut c = claims("eve", json!({}));
            c.as_object_mut().unwrap().remove("exp");
            sign(&key, &c)
        }),
        ("alg_not_allowed", hs),
        ("alg_not_allowed", none),
        ("bad_signature", sign(&other_key, &claims("eve", json!({})))),
        ("unknown_kid", sign(&es256("k2"), &claims("eve", json!({})))),
        ("malformed", "eyJ.x.y".into()),
    ];
    for (reason, token) in &cases {
        let a = get(&gw.client(Some(token)), "/v1/sandboxes").await;
        let body = assert_error(&a, 401, "unauthenticated");
        assert!(!body.reason.contains(token.as_str()), "token echoed");
        let scrape = gw.metrics().await;
        assert!(
            failures(&scrape, reason) >= 1.0,
            "{reason} not counted:\n{scrape}"
        );
    }
    // An audience array naming us is fine.
    let multi = sign(
        &key,
        &claims("frank", json!({"aud": ["x", AUD], "roles": "viewer"})),
    );
    assert_eq!(
        get(&gw.client(Some(&multi)), "/v1/sandboxes").await.status,
        200
    );
    // The unknown kid did not refetch inside the rate-limit window.
    assert_eq!(jwks.fetches(), 1);
    let scrape = gw.metrics().await;
    assert_eq!(failures(&scrape, "alg_not_allowed"), 2.0);
    assert_eq!(failures(&scrape, "wrong_audience"), 2.0);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn a_rotated_issuer_key_is_picked_up_on_unknown_kid() {
    let old = es256("old");
    let jwks = JwksServer::start(vec![old.jwk.clone()]).await;
    let gw = gateway(&jwks, "0s", &["--oidc-group-role", "admins=admin"]).await;
    let c = |k: &IdpKey| sign(k, &claims("ops", json!({"groups": ["admins"]})));
    assert_eq!(
        get(&gw.client(Some(&c(&old))), "/v1/keys").await.status,
        200
    );
    assert_eq!(jwks.fetches(), 1);
    assert_eq!(
        get(&gw.client(Some(&c(&old))), "/v1/keys").await.status,
        200
    );
    assert_eq!(jwks.fetches(), 1, "cached");

    // The issuer rotates to an Ed25519 key and drops the old one.
    let (new, _) = ed25519("new");
    *jwks.keys.lock() = vec![new.jwk.clone()];
    let a = get(&gw.client(Some(&c(&new))), "/v1/keys").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(jwks.fetches(), 2, "the unknown kid triggered one refetch");
    // The old key is gone from the JWKS, so its tokens are refused now.
    assert_error(
        &get(&gw.client(Some(&c(&old))), "/v1/keys").await,
        401,
        "unauthenticated",
    );
    assert!(failures(&gw.metrics().await, "unknown_kid") >= 1.0);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn platform_tokens_from_a_static_pem_file_are_limited_to_their_namespaces() {
    let (key, pem) = ed25519("ignored");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idp.pem");
    std::fs::write(&file, pem).unwrap();
    let file = file.display().to_string();
    let gw = Gw::start(&[
        "--oidc-issuer",
        ISS,
        "--oidc-audience",
        AUD,
        "--oidc-jwks-file",
        &file,
        "--oidc-principal",
        "platform",
    ])
    .await;
    // Static PEM keys have no kid: a token without one is verified by the single key.
    let token = {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = None;
        jsonwebtoken::encode(
            &h,
            &claims("ctrl", json!({"namespaces": ["team-a", "Bad_NS"]})),
            &key.encoding,
        )
        .unwrap()
    };
    let p = gw.client(Some(&token));
    let ok = post_json(
        &p,
        "/v1/sandboxes",
        &json!({"name": "s1", "namespace": "team-a"}),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.json().unwrap()["sandbox"]["owner"], "platform:ctrl");
    assert_error(
        &post_json(
            &p,
            "/v1/sandboxes",
            &json!({"name": "s2", "namespace": "team-b"}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(&get(&p, "/v1/keys").await, 403, "forbidden");
    gw.running.shutdown().await;
}
