//! An in-process fake kube-apiserver: HTTPS (a CA made here with rcgen),
//! bearer-authenticated like a real one, serving TokenReview create, Pod get
//! and Namespace get with real Kubernetes JSON (k8s-openapi types), and a
//! kubeconfig pointing at it. It can be told to hang or to answer 500.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Status, StatusDetails};
use parking_lot::Mutex;

/// The bearer token the gateway's own kube client must present.
pub const CLIENT_TOKEN: &str = "fake-apiserver-client-token-for-the-gateway";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Accept the request and never answer.
    Hang,
    /// Answer every request with a 500 Status.
    Fail500,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    reviews: HashMap<String, TokenReviewStatus>,
    pods: HashMap<(String, String), Pod>,
}

#[derive(Debug, Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    ca_pem: String,
    inner: Arc<Mutex<Inner>>,
    reviews_seen: Arc<AtomicUsize>,
    unauthorized_seen: Arc<AtomicUsize>,
}

fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(v).unwrap())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn status(code: u16, reason: &str, message: &str, details: Option<StatusDetails>) -> Status {
    Status {
        code: Some(i32::from(code)),
        message: Some(message.to_owned()),
        reason: Some(reason.to_owned()),
        status: Some("Failure".to_owned()),
        details,
        metadata: Default::default(),
    }
}

fn error(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::from_u16(code).unwrap(),
        &status(code, reason, message, None),
    )
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let (tls, ca_pem) = crate::support::localhost_tls(&[b"h2", b"http/1.1"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = FakeApiServer {
            addr,
            ca_pem,
            inner: Arc::new(Mutex::new(Inner {
                mode: Mode::Normal,
                reviews: HashMap::new(),
                pods: HashMap::new(),
            })),
            reviews_seen: Arc::new(AtomicUsize::new(0)),
            unauthorized_seen: Arc::new(AtomicUsize::new(0)),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        server
    }

    /// Write a kubeconfig for this server (CA + the gateway's bearer token).
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
             https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: gateway\n  \
             user:\n    token: {CLIENT_TOKEN}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: gateway\ncurrent-context: fake\n",
            self.addr
        );
        let p = dir.join("kubeconfig");
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().mode = mode;
    }

    /// What a TokenReview of `token` answers.
    pub fn review(&self, token: &str, status: TokenReviewStatus) {
        self.inner.lock().reviews.insert(token.to_owned(), status);
    }

    pub fn add_pod(&self, pod: Pod) {
        let ns = pod.metadata.namespace.clone().unwrap();
        let name = pod.metadata.name.clone().unwrap();
        self.inner.lock().pods.insert((ns, name), pod);
    }

    /// TokenReviews received (authorized ones).
    pub fn reviews_seen(&self) -> usize {
        self.reviews_seen.load(Ordering::SeqCst)
    }

    pub fn unauthorized_seen(&self) -> usize {
        self.unauthorized_seen.load(Ordering::SeqCst)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let authorized = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {CLIENT_TOKEN}"));
        if !authorized {
            self.unauthorized_seen.fetch_add(1, Ordering::SeqCst);
            return error(401, "Unauthorized", "Unauthorized");
        }
        let mode = self.inner.lock().mode;
        match mode {
            Mode::Hang => std::future::pending::<()>().await,
            Mode::Fail500 => {
                return error(500, "InternalError", "etcdserver: request timed out");
            }
            Mode::Normal => {}
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segs.as_slice()) {
            (Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let Ok(review) = serde_json::from_slice::<TokenReview>(&body) else {
                    return error(400, "BadRequest", "not a TokenReview");
                };
                self.reviews_seen.fetch_add(1, Ordering::SeqCst);
                let token = review.spec.token.clone().unwrap_or_default();
                let status = self
                    .inner
                    .lock()
                    .reviews
                    .get(&token)
                    .cloned()
                    .unwrap_or_else(|| TokenReviewStatus {
                        authenticated: Some(false),
                        error: Some("[invalid bearer token]".to_owned()),
                        ..TokenReviewStatus::default()
                    });
                let answer = TokenReview {
                    metadata: ObjectMeta {
                        creation_timestamp: None,
                        ..ObjectMeta::default()
                    },
                    spec: review.spec,
                    status: Some(status),
                };
                json_response(StatusCode::CREATED, &answer)
            }
            (Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
                let pod = self
                    .inner
                    .lock()
                    .pods
                    .get(&((*ns).to_owned(), (*name).to_owned()))
                    .cloned();
                match pod {
                    Some(p) => json_response(StatusCode::OK, &p),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        &status(
                            404,
                            "NotFound",
                            &format!("pods \"{name}\" not found"),
                            Some(StatusDetails {
                                name: Some((*name).to_owned()),
                                kind: Some("pods".to_owned()),
                                ..StatusDetails::default()
                            }),
                        ),
                    ),
                }
            }
            (Method::GET, ["api", "v1", "namespaces", ns]) => json_response(
                StatusCode::OK,
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some((*ns).to_owned()),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                },
            ),
            _ => error(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        }
    }
}
