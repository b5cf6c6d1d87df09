//! OTLP span export of the real `palisade gateway serve` binary into an
//! in-process OTLP/gRPC sink (opentelemetry-proto's `TraceService` on
//! 127.0.0.1:0): trace continuation from `traceparent`, the exported
//! attributes and resource, what is never exported, export off without the
//! env, requests unaffected by a dead collector, and the flush at SIGTERM.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use palisade_gateway::client::{Answer, GatewayClient};
use parking_lot::Mutex;
use prost::Message as _;
use support::{ADMIN_TOKEN, write_admin_token};

/// Bound against hangs only; nothing here asserts on time.
const PATIENCE: Duration = Duration::from_secs(60);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

// ---------------------------------------------------------------- the sink

#[derive(Clone, Default)]
struct Sink {
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.got.lock().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Sink {
    async fn start() -> (Sink, SocketAddr) {
        let sink = Sink::default();
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        let service = TraceServiceServer::new(sink.clone());
        tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(service, incoming));
        (sink, addr)
    }

    /// The same sink behind TLS with this certificate and key (PEM).
    async fn start_tls(cert: &str, key: &str) -> (Sink, SocketAddr) {
        let sink = Sink::default();
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        let server = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .serve_with_incoming(TraceServiceServer::new(sink.clone()), incoming);
        tokio::spawn(server);
        (sink, addr)
    }

    fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.got.lock().clone()
    }

    fn spans(&self) -> Vec<Span> {
        self.requests()
            .into_iter()
            .flat_map(|r| r.resource_spans)
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect()
    }

    /// Every exported byte, protobuf-encoded, to search for what must never leave.
    fn raw(&self) -> Vec<u8> {
        self.requests()
            .iter()
            .flat_map(|r| r.encode_to_vec())
            .collect()
    }

    /// Wait (bounded) until a span of `trace_id` with `span_id` arrived.
    async fn wait_for(&self, trace_id: &str, span_id: &str) -> Span {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| {
                hex::encode(&s.trace_id) == trace_id && hex::encode(&s.span_id) == span_id
            }) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "span {trace_id}/{span_id} never reached the sink; got {:?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attr(span: &Span, key: &str) -> Option<any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

// ------------------------------------------------------------- the gateway

struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    api: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gateway {
    /// Start `palisade gateway serve` with exactly these `OTEL_*` variables
    /// (every other `OTEL_*` removed) and wait until `/ready`.
    async fn start(otel: &[(&str, String)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let token = write_admin_token(dir.path());
        let (api, admin) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
        cmd.args(["gateway", "serve", "--insecure-plaintext"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{api}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--admin-token-file")
            .arg(&token)
            .env_remove("PALISADE_CONFIG")
            .env("PALISADE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in otel {
            cmd.env(k, v);
        }
        let mut gw = Gateway {
            child: cmd.spawn().unwrap(),
            dir,
            api: SocketAddr::from(([127, 0, 0, 1], api)),
        };
        let ready = GatewayClient::new(&format!("http://127.0.0.1:{admin}"), None, None).unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = gw.child.try_wait().unwrap() {
                panic!("gateway exited with {status} before /ready:\n{}", gw.log());
            }
            if let Ok(a) = ready.send(Method::GET, "/ready", None, Bytes::new()).await
                && a.status == 200
            {
                return gw;
            }
            assert!(Instant::now() < deadline, "gateway never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn admin(&self) -> GatewayClient {
        GatewayClient::new(
            &format!("http://{}", self.api),
            Some(ADMIN_TOKEN.to_owned()),
            None,
        )
        .unwrap()
    }

    async fn get(&self, path: &str, traceparent: Option<&str>) -> Answer {
        let extra: Vec<(&str, &str)> = traceparent
            .map(|t| ("traceparent", t))
            .into_iter()
            .collect();
        self.admin()
            .send_with(Method::GET, path, None, Bytes::new(), &extra)
            .await
            .unwrap()
    }

    async fn create_sandbox(&self) -> String {
        let body = serde_json::json!({ "name": "otlp-demo" }).to_string();
        let a = self
            .admin()
            .send(
                Method::POST,
                "/v1/sandboxes",
                Some("application/json"),
                Bytes::from(body),
            )
            .await
            .unwrap();
        assert_eq!(a.status, 201, "{:?}", a.body);
        a.json().unwrap()["sandbox"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Whether the OpenTelemetry batch exporter thread exists in the process.
    fn has_exporter_thread(&self) -> bool {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks).unwrap().any(|t| {
            std::fs::read_to_string(t.unwrap().path().join("comm"))
                .is_ok_and(|c| c.starts_with("OpenTelemetry"))
        })
    }

    /// SIGTERM, then wait (bounded) for the exit.
    async fn terminate(&mut self) -> ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `(trace id, span id)` of a `traceresponse` header.
fn traceresponse(a: &Answer) -> (String, String) {
    let v = a.headers["traceresponse"].to_str().unwrap();
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread")]
async fn request_spans_continue_the_callers_trace_and_carry_only_safe_attributes() {
    let (sink, addr) = Sink::start().await;
    let gw = Gateway::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(addr)),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ])
    .await;
    assert!(
        gw.has_exporter_thread(),
        "no exporter thread with the env set"
    );
    let id = gw.create_sandbox().await;

    let tp = traceparent();
    let a = gw.get(&format!("/v1/sandboxes/{id}"), Some(&tp)).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let (trace_id, span_id) = traceresponse(&a);
    assert_eq!(trace_id, TRACE_ID, "traceresponse must continue the trace");
    assert_ne!(span_id, PARENT_ID);

    let span = sink.wait_for(&trace_id, &span_id).await;
    assert_eq!(hex::encode(&span.parent_span_id), PARENT_ID);
    assert_eq!(span.name, "GET /v1/sandboxes/{id}");
    assert_eq!(
        span.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
    );
    assert_eq!(
        attr(&span, "http.route"),
        Some(any_value::Value::StringValue("/v1/sandboxes/{id}".into()))
    );
    assert_eq!(
        attr(&span, "http.request.method"),
        Some(any_value::Value::StringValue("GET".into()))
    );
    assert_eq!(
        attr(&span, "http.response.status_code"),
        Some(any_value::Value::IntValue(200))
    );
    let mut keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "http.request.method",
            "http.response.status_code",
            "http.route"
        ]
    );
    assert!(span.events.is_empty() && span.links.is_empty());

    // A request without traceparent starts its own trace; the answer names it.
    let fresh = gw.get("/v1/sandboxes", None).await;
    assert_eq!(fresh.status, 200);
    let (fresh_trace, fresh_span) = traceresponse(&fresh);
    assert_ne!(fresh_trace, TRACE_ID);
    let root = sink.wait_for(&fresh_trace, &fresh_span).await;
    assert!(root.parent_span_id.is_empty(), "{:?}", root.parent_span_id);

    // A refused request (bad token) is exported too, token-free.
    let bad = GatewayClient::new(
        &format!("http://{}", gw.api),
        Some("not-a-valid-token-5f8a7c".to_owned()),
        None,
    )
    .unwrap()
    .send_with(
        Method::GET,
        "/v1/sandboxes",
        None,
        Bytes::new(),
        &[("traceparent", &tp), ("x-request-id", "req-id-77c1e9")],
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 401);
    let (_, bad_span) = traceresponse(&bad);
    let refused = sink.wait_for(TRACE_ID, &bad_span).await;
    assert_eq!(
        attr(&refused, "http.response.status_code"),
        Some(any_value::Value::IntValue(401))
    );

    // The resource names the service.
    let service_names: Vec<_> = sink
        .requests()
        .into_iter()
        .flat_map(|r| r.resource_spans)
        .filter_map(|rs| rs.resource)
        .flat_map(|r| r.attributes)
        .filter(|kv| kv.key == "service.name")
        .filter_map(|kv| kv.value?.value)
        .collect();
    assert!(!service_names.is_empty());
    for name in service_names {
        assert_eq!(
            name,
            any_value::Value::StringValue("palisade-gateway".into())
        );
    }

    // Never exported: credentials, request ids, raw path ids, principals.
    let raw = sink.raw();
    for secret in [
        ADMIN_TOKEN,
        "Bearer",
        "not-a-valid-token-5f8a7c",
        "req-id-77c1e9",
        id.as_str(),
        "authorization",
        "admin",
    ] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} was exported"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_endpoint_env_nothing_is_exported_and_no_exporter_runs() {
    let (sink, addr) = Sink::start().await;
    // Everything but the endpoint points at the sink's way of talking.
    let mut gw = Gateway::start(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_SERVICE_NAME", format!("unused-{}", addr.port())),
    ])
    .await;
    assert!(!gw.has_exporter_thread(), "exporter thread without the env");
    let a = gw.get("/v1/sandboxes", Some(&traceparent())).await;
    assert_eq!(a.status, 200);
    // W3C propagation works without OpenTelemetry.
    assert_eq!(traceresponse(&a).0, TRACE_ID);
    assert!(gw.terminate().await.success(), "{}", gw.log());
    assert!(!gw.log().contains("OTLP"), "{}", gw.log());
    assert!(sink.requests().is_empty());

    // OTEL_SDK_DISABLED=true wins over an endpoint.
    let mut off = Gateway::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(addr)),
        ("OTEL_SDK_DISABLED", "true".to_owned()),
    ])
    .await;
    assert!(!off.has_exporter_thread());
    assert_eq!(
        off.get("/v1/sandboxes", Some(&traceparent())).await.status,
        200
    );
    assert!(off.terminate().await.success(), "{}", off.log());
    assert!(sink.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_collector_never_affects_requests() {
    // A port nobody listens on.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut gw = Gateway::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(dead)),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000".to_owned()),
    ])
    .await;
    assert!(gw.has_exporter_thread());
    for _ in 0..20 {
        let a = gw.get("/v1/sandboxes", Some(&traceparent())).await;
        assert_eq!(a.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait (bounded) for the exporter to have failed at least once; the
    // requests above were answered regardless.
    let deadline = Instant::now() + PATIENCE;
    while !gw
        .log()
        .contains("cannot export spans to the OTLP collector")
    {
        assert!(
            Instant::now() < deadline,
            "no export warning:\n{}",
            gw.log()
        );
        assert_eq!(gw.get("/v1/sandboxes", None).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = gw.log();
    assert_eq!(
        log.matches("cannot export spans to the OTLP collector")
            .count(),
        1,
        "warned more than once:\n{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    assert!(gw.terminate().await.success(), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_pending_spans() {
    let (sink, addr) = Sink::start().await;
    // Batches would only leave after an hour: what arrives was flushed at exit.
    let mut gw = Gateway::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(addr)),
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000".to_owned()),
    ])
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let a = gw.get("/v1/sandboxes", Some(&traceparent())).await;
        assert_eq!(a.status, 200);
        ids.push(traceresponse(&a));
    }
    assert!(sink.requests().is_empty(), "exported before the flush");
    assert!(gw.terminate().await.success(), "{}", gw.log());
    for (trace, span) in ids {
        let s = sink.wait_for(&trace, &span).await;
        assert_eq!(hex::encode(&s.parent_span_id), PARENT_ID);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_collector_is_reached_with_the_configured_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (sink, addr) = Sink::start_tls(&cert.cert.pem(), &cert.signing_key.serialize_pem()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), cert.cert.pem()).unwrap();
    let gw = Gateway::start(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://localhost:{}", addr.port()),
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ca.path().display().to_string(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ])
    .await;
    let a = gw.get("/v1/sandboxes", Some(&traceparent())).await;
    assert_eq!(a.status, 200);
    let (trace, span) = traceresponse(&a);
    let s = sink.wait_for(&trace, &span).await;
    assert_eq!(hex::encode(&s.parent_span_id), PARENT_ID);
}

#[test]
fn a_bad_endpoint_stops_the_start_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let token = write_admin_token(dir.path());
    for (var, value, expect) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "ftp://collector:4317",
            "OTEL_EXPORTER_OTLP_ENDPOINT is not a usable OTLP/gRPC endpoint",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://bad host:4317",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is not a usable OTLP/gRPC endpoint",
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/protobuf",
            "set OTEL_EXPORTER_OTLP_PROTOCOL=grpc or unset it",
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem",
            "cannot read OTEL_EXPORTER_OTLP_CERTIFICATE=/nonexistent/ca.pem",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
        cmd.args(["gateway", "serve", "--insecure-plaintext"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--admin-token-file")
            .arg(&token)
            .env_remove("PALISADE_CONFIG");
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317");
        cmd.env(var, value);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(err.contains(expect), "{var}={value}: {err}");
    }
}
