//! A fake SPIFFE Workload API: gRPC (tonic + prost, the Workload API proto's messages and
//! method paths) on a unix socket, serving `FetchJWTSVID` and `FetchJWTBundles`.
//!
//! SVIDs are real ES256 JWTs signed with a P-256 key generated at start; the bundle is the
//! matching JWKS. Like the SPIRE agent, every call without the `workload.spiffe.io: true`
//! metadata header is refused (`InvalidArgument`, "security header missing from request").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::net::UnixListener;

/// Trust domain of the fake.
pub const TRUST_DOMAIN: &str = "example.org";
/// SPIFFE ID every SVID is issued to.
pub const SPIFFE_ID: &str = "spiffe://example.org/ns/palisade/sandbox/test";
/// `kid` of the signing key.
pub const KEY_ID: &str = "fake-spire-key-1";

/// Messages of `workload.proto` (same field numbers and types).
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct JwtsvidRequest {
        #[prost(string, repeated, tag = "1")]
        pub audience: Vec<String>,
        #[prost(string, tag = "2")]
        pub spiffe_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct JwtsvidResponse {
        #[prost(message, repeated, tag = "1")]
        pub svids: Vec<Jwtsvid>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Jwtsvid {
        #[prost(string, tag = "1")]
        pub spiffe_id: String,
        #[prost(string, tag = "2")]
        pub svid: String,
        #[prost(string, tag = "3")]
        pub hint: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct JwtBundlesRequest {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct JwtBundlesResponse {
        #[prost(map = "string, bytes", tag = "1")]
        pub bundles: std::collections::HashMap<String, Vec<u8>>,
    }
}

const FETCH_JWT_SVID: &str = "/SpiffeWorkloadAPI/FetchJWTSVID";
const FETCH_JWT_BUNDLES: &str = "/SpiffeWorkloadAPI/FetchJWTBundles";

struct State {
    key: EncodingKey,
    jwks: serde_json::Value,
    svid_ttl_seconds: AtomicU64,
    deny: AtomicBool,
    svid_calls: AtomicUsize,
    bundle_calls: AtomicUsize,
    refused_calls: AtomicUsize,
}

/// The running fake; stops when dropped.
pub struct FakeWorkloadApi {
    _dir: Option<tempfile::TempDir>,
    socket: PathBuf,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeWorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWorkloadApi")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeWorkloadApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeWorkloadApi {
    /// Generate a signing key and listen on `<tempdir>/agent.sock` (a root-only 0700 dir).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agent.sock");
        let mut api = Self::start_at(&socket).await?;
        api._dir = Some(dir);
        Ok(api)
    }

    /// Like [`Self::start`], listening on `socket` (which must not exist). Who may connect is
    /// up to the caller: the socket's owner and mode, and those of its directory, decide
    /// (e.g. a 0700 directory owned by the sidecar UID, as a sidecar-only mount).
    pub async fn start_at(socket: &Path) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let raw = key.public_key_raw();
        anyhow::ensure!(
            raw.len() == 65 && raw[0] == 4,
            "unexpected P-256 public key encoding"
        );
        let jwks = serde_json::json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
                "kid": KEY_ID,
                "use": "jwt-svid",
            }]
        });
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
            .context("the generated key is not usable for ES256")?;
        let state = Arc::new(State {
            key: encoding,
            jwks,
            svid_ttl_seconds: AtomicU64::new(300),
            deny: AtomicBool::new(false),
            svid_calls: AtomicUsize::new(0),
            bundle_calls: AtomicUsize::new(0),
            refused_calls: AtomicUsize::new(0),
        });
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(Self {
            _dir: None,
            socket: socket.to_path_buf(),
            state,
            task,
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `unix:<path>`, the form of `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// The JWT bundle (a JWKS) of [`TRUST_DOMAIN`].
    pub fn jwks(&self) -> serde_json::Value {
        self.state.jwks.clone()
    }

    /// Lifetime of SVIDs issued from now on.
    pub fn set_svid_ttl(&self, seconds: u64) {
        self.state.svid_ttl_seconds.store(seconds, Ordering::SeqCst);
    }

    /// Answer `FetchJWTSVID` with `PermissionDenied` "no identity issued", as SPIRE does for a
    /// workload without a registration entry.
    pub fn set_deny(&self, deny: bool) {
        self.state.deny.store(deny, Ordering::SeqCst);
    }

    /// `FetchJWTSVID` calls answered with an SVID.
    pub fn svid_calls(&self) -> usize {
        self.state.svid_calls.load(Ordering::SeqCst)
    }

    /// `FetchJWTBundles` calls answered.
    pub fn bundle_calls(&self) -> usize {
        self.state.bundle_calls.load(Ordering::SeqCst)
    }

    /// Calls refused for a missing security header.
    pub fn refused_calls(&self) -> usize {
        self.state.refused_calls.load(Ordering::SeqCst)
    }

    /// Sign an SVID directly (for tests of the token endpoint double).
    pub fn sign_svid(&self, audience: &[&str], ttl_seconds: i64) -> anyhow::Result<String> {
        sign(&self.state, audience, ttl_seconds)
    }
}

fn sign(state: &State, audience: &[&str], ttl_seconds: i64) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let claims = serde_json::json!({
        "sub": SPIFFE_ID,
        "aud": audience,
        "exp": now + ttl_seconds,
        "iat": now,
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KEY_ID.to_owned());
    header.typ = Some("JWT".to_owned());
    Ok(jsonwebtoken::encode(&header, &claims, &state.key)?)
}

async fn serve(listener: UnixListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(state, req).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn route(
    state: Arc<State>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        FETCH_JWT_SVID => {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            grpc.unary(SvidService(state), req).await
        }
        FETCH_JWT_BUNDLES => {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            grpc.server_streaming(BundleService(state), req).await
        }
        _ => tonic::Status::unimplemented(format!("{path} is not served by this fake")).into_http(),
    }
}

/// SPIRE's answer to a call without `workload.spiffe.io: true`.
fn check_header<T>(state: &State, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
    match req.metadata().get("workload.spiffe.io") {
        Some(v) if v == "true" => Ok(()),
        _ => {
            state.refused_calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::invalid_argument(
                "security header missing from request",
            ))
        }
    }
}

struct SvidService(Arc<State>);

impl tonic::server::UnaryService<pb::JwtsvidRequest> for SvidService {
    type Response = pb::JwtsvidResponse;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<tonic::Response<Self::Response>, tonic::Status>> + Send>,
    >;

    fn call(&mut self, req: tonic::Request<pb::JwtsvidRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            check_header(&state, &req)?;
            if state.deny.load(Ordering::SeqCst) {
                return Err(tonic::Status::permission_denied("no identity issued"));
            }
            let req = req.into_inner();
            if req.audience.is_empty() {
                return Err(tonic::Status::invalid_argument(
                    "audience must be specified",
                ));
            }
            let audience: Vec<&str> = req.audience.iter().map(String::as_str).collect();
            let ttl = state.svid_ttl_seconds.load(Ordering::SeqCst) as i64;
            let svid = sign(&state, &audience, ttl)
                .map_err(|e| tonic::Status::internal(format!("cannot sign: {e}")))?;
            state.svid_calls.fetch_add(1, Ordering::SeqCst);
            Ok(tonic::Response::new(pb::JwtsvidResponse {
                svids: vec![pb::Jwtsvid {
                    spiffe_id: SPIFFE_ID.to_owned(),
                    svid,
                    hint: String::new(),
                }],
            }))
        })
    }
}

struct BundleService(Arc<State>);

type BundleStream = std::pin::Pin<
    Box<dyn tokio_stream_like::Stream<Item = Result<pb::JwtBundlesResponse, tonic::Status>> + Send>,
>;

impl tonic::server::ServerStreamingService<pb::JwtBundlesRequest> for BundleService {
    type Response = pb::JwtBundlesResponse;
    type ResponseStream = BundleStream;
    type Future = std::pin::Pin<
        Box<
            dyn Future<Output = Result<tonic::Response<Self::ResponseStream>, tonic::Status>>
                + Send,
        >,
    >;

    fn call(&mut self, req: tonic::Request<pb::JwtBundlesRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            check_header(&state, &req)?;
            state.bundle_calls.fetch_add(1, Ordering::SeqCst);
            let mut bundles = HashMap::new();
            bundles.insert(
                TRUST_DOMAIN.to_owned(),
                serde_json::to_vec(&state.jwks)
                    .map_err(|e| tonic::Status::internal(e.to_string()))?,
            );
            let stream: BundleStream =
                Box::pin(tokio_stream_like::once(Ok(pb::JwtBundlesResponse {
                    bundles,
                })));
            Ok(tonic::Response::new(stream))
        })
    }
}

/// A one-item `Stream` without pulling in a stream crate.
mod tokio_stream_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub use tonic::codegen::tokio_stream::Stream;

    pub struct Once<T>(Option<T>);

    pub fn once<T>(item: T) -> Once<T> {
        Once(Some(item))
    }

    impl<T: Unpin> Stream for Once<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
            Poll::Ready(self.0.take())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};

    /// A raw gRPC call (HTTP/2 over the unix socket), with or without the security header.
    async fn raw_fetch_svid(api: &FakeWorkloadApi, header: bool) -> (String, Option<Vec<u8>>) {
        let stream = tokio::net::UnixStream::connect(api.socket_path())
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let payload = prost::Message::encode_to_vec(&pb::JwtsvidRequest {
            audience: vec!["aud".into()],
            spiffe_id: String::new(),
        });
        let mut framed = vec![0u8];
        framed.extend((payload.len() as u32).to_be_bytes());
        framed.extend(payload);
        let mut req = http::Request::post(format!("http://localhost{FETCH_JWT_SVID}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if header {
            req = req.header("workload.spiffe.io", "true");
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(framed))).unwrap())
            .await
            .unwrap();
        let mut status = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        let collected = resp.into_body().collect().await.unwrap();
        if let Some(t) = collected.trailers()
            && let Some(s) = t.get("grpc-status")
        {
            status = Some(s.to_str().unwrap().to_owned());
        }
        let body = collected.to_bytes();
        let message = (body.len() > 5).then(|| body[5..].to_vec());
        (status.unwrap_or_default(), message)
    }

    #[tokio::test]
    async fn calls_without_the_security_header_are_refused() {
        let api = FakeWorkloadApi::start().await.unwrap();
        let (status, message) = raw_fetch_svid(&api, false).await;
        assert_eq!(status, "3", "InvalidArgument");
        assert!(message.is_none());
        assert_eq!(api.refused_calls(), 1);
        assert_eq!(api.svid_calls(), 0);
        let (status, message) = raw_fetch_svid(&api, true).await;
        assert_eq!(status, "0");
        let resp: pb::JwtsvidResponse = prost::Message::decode(&message.unwrap()[..]).unwrap();
        assert_eq!(resp.svids.len(), 1);
        assert_eq!(resp.svids[0].spiffe_id, SPIFFE_ID);
        assert_eq!(api.svid_calls(), 1);
    }

    #[tokio::test]
    async fn the_spiffe_crate_client_reads_svids_and_bundles() {
        let api = FakeWorkloadApi::start().await.unwrap();
        let client = spiffe::WorkloadApiClient::connect_to(api.endpoint())
            .await
            .unwrap();
        let svid = client.fetch_jwt_svid(["svc-a"], None).await.unwrap();
        assert_eq!(svid.spiffe_id().to_string(), SPIFFE_ID);
        assert_eq!(svid.audience(), ["svc-a".to_owned()]);
        let bundles = client.fetch_jwt_bundles().await.unwrap();
        let td = spiffe::TrustDomain::try_from(TRUST_DOMAIN).unwrap();
        let bundle = bundles.get(&td).unwrap();
        assert!(bundle.find_jwt_authority(KEY_ID).is_some());
        // The bundle key really verifies the SVID (ES256, by kid).
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(api.jwks()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(KEY_ID).unwrap()).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_audience(&["svc-a"]);
        jsonwebtoken::decode::<serde_json::Value>(svid.token(), &key, &v).unwrap();
        v.set_audience(&["svc-b"]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(svid.token(), &key, &v).is_err());
    }
}
