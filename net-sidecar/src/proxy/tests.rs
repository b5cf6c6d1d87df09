//! Loopback integration tests: the real listeners, decision path, splice and HTTP proxy on
//! ephemeral 127.0.0.1 ports, with a static resolver instead of DNS (the kernel-level
//! capture path is covered by `e2e/tests/dataplane.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::decide::Decider;
use super::peek::tests::{client_hello_message, records};
use super::resolve::StaticResolver;
use super::{Shared, Timeouts, explicit, listener, transparent};
use crate::admin::{self, Metrics, State};
use crate::dns::AnswerCache;

const PATIENCE: Duration = Duration::from_secs(30);

struct Harness {
    proxy: SocketAddr,
    transparent: SocketAddr,
    metrics: Metrics,
    policy_tx: watch::Sender<Arc<palisade_policy::CompiledPolicy>>,
    state: State,
}

fn compile(yaml: &str) -> Arc<palisade_policy::CompiledPolicy> {
    Arc::new(super::decide::tests::policy(yaml))
}

/// A policy allowing `allowed.test` on `port`, `opaque.test` on `port` with opaque TCP.
fn policy_yaml(port: u16, mode: &str) -> String {
    format!(
        r#"
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {{name: loopback}}
spec:
  mode: {mode}
  egress:
    - {{name: allowed, hosts: [allowed.test], ports: [{port}]}}
    - {{name: opaque, hosts: [opaque.test], ports: [{port}], opaqueTcp: true}}
    - {{name: rules, hosts: [rules.test], ports: [{port}], http: {{access: read-only}}}}
    - {{name: forms, hosts: [forms.test], ports: [{port}], http: {{access: read-write}}}}
    - {{name: paths, hosts: [paths.test], ports: [{port}], http: {{allow: [{{path: "/open/**"}}]}}}}
"#
    )
}

async fn harness(yaml: &str, peek: Duration) -> Harness {
    let resolver = StaticResolver::with(&[
        ("allowed.test", &["127.0.0.1"]),
        ("opaque.test", &["127.0.0.1"]),
        ("rules.test", &["127.0.0.1"]),
        ("forms.test", &["127.0.0.1"]),
        ("paths.test", &["127.0.0.1"]),
        ("other.test", &["127.0.0.1"]),
    ]);
    let mut decider = Decider::new(Arc::new(resolver), Arc::new(AnswerCache::new(64)));
    decider.loopback_upstreams = true;
    let metrics = Metrics::new().unwrap();
    let (policy_tx, policy) = watch::channel(compile(yaml));
    let state = State::new();
    let shared = Arc::new(Shared {
        policy,
        decider,
        metrics: metrics.clone(),
        timeouts: Timeouts {
            connect: PATIENCE,
            idle: PATIENCE * 4,
            peek,
        },
        state: state.clone(),
        tls: Arc::new(
            crate::tls::Interceptor::new(
                &crate::tls::TlsSettings {
                    shared_dir: {
                        let d = std::env::temp_dir()
                            .join(format!("palisade-sidecar-test-{}", std::process::id()));
                        std::fs::create_dir_all(&d).unwrap();
                        d
                    },
                    ca_validity: Duration::from_secs(3600),
                    upstream_ca: None,
                },
                Vec::new(),
                metrics.leaf_cache.clone(),
            )
            .unwrap(),
        ),
        credentials: Arc::new(crate::credentials::Registry::new()),
        max_header_bytes: 32 * 1024,
        pool: Arc::new(super::http::UpstreamPool::new()),
    });
    let limit = Arc::new(Semaphore::new(100));
    let l = listener::bind_one("127.0.0.1:0".parse().unwrap()).unwrap();
    let proxy = l.local_addr().unwrap();
    let s = shared.clone();
    tokio::spawn(listener::accept_loop(
        l,
        state.clone(),
        limit.clone(),
        metrics.clone(),
        move |conn| explicit::handle(s.clone(), conn),
    ));
    let l = listener::bind_one("127.0.0.1:0".parse().unwrap()).unwrap();
    let transparent_addr = l.local_addr().unwrap();
    let s = shared.clone();
    tokio::spawn(listener::accept_loop(
        l,
        state.clone(),
        limit,
        metrics.clone(),
        move |conn| transparent::handle(s.clone(), conn),
    ));
    state.set_ready();
    Harness {
        proxy,
        transparent: transparent_addr,
        metrics,
        policy_tx,
        state,
    }
}

/// An upstream that echoes every byte back, and reports what it received.
async fn echo_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            all.extend_from_slice(&buf[..n]);
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(all);
            });
        }
    });
    (addr, rx)
}

/// An HTTP upstream answering `<method> <host> <path>` in the body.
async fn http_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    let leaked = req.headers().contains_key("proxy-authorization");
                    let body = format!("{} {} {} leaked={leaked}", req.method(), host, req.uri());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Read one HTTP/1 response (status, head, body by content-length).
async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> (u16, String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, r.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tokio::time::timeout(PATIENCE, r.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

/// Read until EOF or reset; true if the peer closed without sending anything more.
async fn closed_without_data(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .unwrap()
    {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

async fn connect(h: &Harness, target: &str) -> (TcpStream, u16, String, String) {
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, head, body) = read_response(&mut s).await;
    (s, status, head, body)
}

fn count(m: &Metrics, decision: &str, protocol: &str, rule: &str) -> u64 {
    m.connections
        .with_label_values(&[decision, protocol, rule])
        .get()
}

#[tokio::test]
async fn connect_allowed_tls_passes_bytes_unchanged() {
    let (up, mut received) = echo_server().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let (mut s, status, _, _) = connect(&h, &format!("allowed.test:{}", up.port())).await;
    assert_eq!(status, 200);
    let hello = records(&client_hello_message(Some("allowed.test")), 100);
    s.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, hello, "bytes must pass through unchanged");
    drop(s);
    assert_eq!(received.recv().await.unwrap(), hello);
    assert_eq!(count(&h.metrics, "allow", "tls", "allowed"), 1);
    assert!(h.metrics.bytes_up.get() >= hello.len() as u64);
    assert!(h.metrics.bytes_down.get() >= hello.len() as u64);
}

#[tokio::test]
async fn connect_denied_gets_a_403_json_body() {
    let (up, _) = echo_server().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let (_, status, head, body) = connect(&h, &format!("other.test:{}", up.port())).await;
    assert_eq!(status, 403);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"error": "policy_denied", "reason": "no_matching_rule", "host": "other.test"})
    );
    // Right host, wrong port names the rule.
    let (_, status, _, body) = connect(&h, "allowed.test:1").await;
    assert_eq!(status, 403);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["rule"], "allowed");
    assert_eq!(json["reason"], "port_not_allowed");
    assert_eq!(
        h.metrics
            .denials
            .with_label_values(&["no_matching_rule"])
            .get(),
        1
    );
    assert_eq!(
        h.metrics
            .denials
            .with_label_values(&["port_not_allowed"])
            .get(),
        1
    );
    assert_eq!(count(&h.metrics, "deny", "tcp", "none"), 1);
}

#[tokio::test]
async fn connect_with_a_foreign_sni_is_closed_as_destination_mismatch() {
    let (up, mut received) = echo_server().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let (mut s, status, _, _) = connect(&h, &format!("allowed.test:{}", up.port())).await;
    assert_eq!(status, 200);
    s.write_all(&records(&client_hello_message(Some("evil.test")), 16384))
        .await
        .unwrap();
    assert!(closed_without_data(&mut s).await);
    assert_eq!(
        received.recv().await.unwrap(),
        b"",
        "no byte of the tunnel may reach the upstream"
    );
    assert_eq!(
        h.metrics
            .denials
            .with_label_values(&["destination_mismatch"])
            .get(),
        1
    );
    assert_eq!(count(&h.metrics, "deny", "tls", "allowed"), 1);
}

#[tokio::test]
async fn connect_opaque_needs_opaque_tcp() {
    let (up, mut received) = echo_server().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let (mut s, _, _, _) = connect(&h, &format!("allowed.test:{}", up.port())).await;
    s.write_all(b"\x00\x01binary protocol").await.unwrap();
    assert!(closed_without_data(&mut s).await);
    assert_eq!(received.recv().await.unwrap(), b"");
    assert_eq!(
        h.metrics
            .denials
            .with_label_values(&["opaque_tcp_not_allowed"])
            .get(),
        1
    );

    let (mut s, status, _, _) = connect(&h, &format!("opaque.test:{}", up.port())).await;
    assert_eq!(status, 200);
    s.write_all(b"\x00\x01binary protocol").await.unwrap();
    let mut back = [0u8; 17];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"\x00\x01binary protocol");
    assert_eq!(count(&h.metrics, "allow", "tcp", "opaque"), 1);
}

#[tokio::test]
async fn connect_target_must_be_host_and_port() {
    let h = harness(&policy_yaml(1, "enforce"), PATIENCE).await;
    for target in ["allowed.test", "user@allowed.test:443", "allowed.test:0"] {
        let (_, status, _, body) = connect(&h, target).await;
        assert_eq!(status, 400, "{target}: {body}");
    }
}

#[tokio::test]
async fn explicit_proxy_refuses_smuggling_heads_before_the_upstream() {
    // An upstream that only counts connections: none may arrive.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    for (probe, want) in [
        (
            format!(
                "POST http://allowed.test:{port}/a HTTP/1.1\r\nHost: allowed.test:{port}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            "cl_and_te",
        ),
        (
            format!("GET http://allowed.test:{port}/b HTTP/1.1\nHost: allowed.test:{port}\n\n"),
            "bare_lf",
        ),
        (
            format!(
                "POST http://allowed.test:{port}/c HTTP/1.1\r\nHost: allowed.test:{port}\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
            ),
            "duplicate_content_length",
        ),
    ] {
        let mut s = TcpStream::connect(h.proxy).await.unwrap();
        s.write_all(probe.as_bytes()).await.unwrap();
        let (status, _, body) = read_response(&mut s).await;
        assert_eq!(status, 400, "{want}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "bad_request", "{want}: {body}");
    }
    // None of them reached the upstream; each was counted under its own kind.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    for kind in ["cl_and_te", "bare_lf", "duplicate_content_length"] {
        assert_eq!(
            h.metrics.bad_input.with_label_values(&[kind]).get(),
            1,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn absolute_form_is_checked_on_every_request() {
    let up = http_server().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    let port = up.port();
    // Allowed; Proxy-Authorization must not reach the upstream.
    s.write_all(
        format!(
            "GET http://allowed.test:{port}/x?y=1 HTTP/1.1\r\nHost: allowed.test:{port}\r\nProxy-Authorization: Basic c2VjcmV0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("GET allowed.test:{port} /x?y=1 leaked=false"));
    // Same keep-alive connection, another host: decided again, refused.
    s.write_all(
        format!("GET http://other.test:{port}/ HTTP/1.1\r\nHost: other.test:{port}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 403);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"error": "policy_denied", "reason": "no_matching_rule", "host": "other.test"})
    );
    // Host header that does not match the absolute URL.
    s.write_all(
        format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 400, "{body}");
    // Origin-form to the proxy is not a proxy request.
    s.write_all(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut s).await;
    assert_eq!(status, 400);
    assert_eq!(
        h.metrics
            .http_requests
            .with_label_values(&["allow", "allowed"])
            .get(),
        1
    );
    assert_eq!(
        h.metrics
            .http_requests
            .with_label_values(&["deny", "none"])
            .get(),
        1
    );
    assert_eq!(count(&h.metrics, "allow", "http", "allowed"), 1);
}

#[tokio::test]
async fn http_rules_apply_to_plain_http() {
    let up = http_server().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(
        format!(
            "GET http://rules.test:{port}/a/./b/../c HTTP/1.1\r\nHost: rules.test:{port}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(
        (status, body),
        (200, format!("GET rules.test:{port} /a/c leaked=false"))
    );
    s.write_all(
        format!("POST http://rules.test:{port}/a HTTP/1.1\r\nHost: rules.test:{port}\r\ncontent-length: 2\r\n\r\nhi")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 403, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["rule"], "rules");
    s.write_all(
        format!("GET http://rules.test:{port}//a HTTP/1.1\r\nHost: rules.test:{port}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, _) = read_response(&mut s).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn plain_http_inside_connect_must_stay_on_the_tunnel_host() {
    let up = http_server().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    let (mut s, status, _, _) = connect(&h, &format!("allowed.test:{port}")).await;
    assert_eq!(status, 200);
    s.write_all(format!("GET /in HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(
        (status, body),
        (200, format!("GET allowed.test:{port} /in leaked=false"))
    );
    s.write_all(format!("GET /in HTTP/1.1\r\nHost: other.test:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 403);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["reason"], "destination_mismatch");
}

#[tokio::test]
async fn audit_mode_lets_denials_through_and_counts_them() {
    let (up, _) = echo_server().await;
    let h = harness(&policy_yaml(up.port(), "audit"), PATIENCE).await;
    let (mut s, status, _, _) = connect(&h, &format!("other.test:{}", up.port())).await;
    assert_eq!(status, 200);
    let hello = records(&client_hello_message(Some("other.test")), 16384);
    s.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(count(&h.metrics, "audit_deny", "tls", "none"), 1);
    assert_eq!(
        h.metrics
            .denials
            .with_label_values(&["no_matching_rule"])
            .get(),
        0
    );
}

#[tokio::test]
async fn policy_updates_apply_to_the_next_connection() {
    let (up, _) = echo_server().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let (_, status, _, _) = connect(&h, &format!("allowed.test:{}", up.port())).await;
    assert_eq!(status, 200);
    h.policy_tx.send_replace(compile(
        &policy_yaml(up.port(), "enforce").replace("[allowed.test]", "[x.test]"),
    ));
    let (_, status, _, _) = connect(&h, &format!("allowed.test:{}", up.port())).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn garbage_and_huge_heads_are_refused_and_counted() {
    let h = harness(&policy_yaml(1, "enforce"), PATIENCE).await;
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut all))
        .await
        .unwrap();
    assert!(
        all.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    // Refused by the raw-head check in front of hyper, as unparseable HTTP.
    assert_eq!(
        h.metrics
            .bad_input
            .with_label_values(&["malformed_http"])
            .get(),
        1
    );

    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    let mut req = b"GET http://allowed.test/ HTTP/1.1\r\nHost: ".to_vec();
    req.resize(64 * 1024, b'a');
    req.extend_from_slice(b"\r\n\r\n");
    let _ = s.write_all(&req).await; // the proxy may stop reading early
    let mut all = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut all))
        .await
        .unwrap();
    assert!(
        all.is_empty() || all.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    assert_eq!(
        h.metrics
            .bad_input
            .with_label_values(&["header_too_large"])
            .get(),
        1
    );
}

#[tokio::test]
async fn slowloris_on_the_explicit_proxy_times_out() {
    let h = harness(&policy_yaml(1, "enforce"), Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    let writer = async {
        for b in b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(PATIENCE, writer).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        h.metrics
            .bad_input
            .with_label_values(&["peek_timeout"])
            .get(),
        1
    );
}

#[tokio::test]
async fn unredirected_connections_to_the_transparent_port_are_refused() {
    let h = harness(&policy_yaml(1, "enforce"), PATIENCE).await;
    let mut s = TcpStream::connect(h.transparent).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_without_data(&mut s).await);
    assert_eq!(
        h.metrics
            .bad_input
            .with_label_values(&["not_redirected"])
            .get(),
        1
    );
}

#[tokio::test]
async fn draining_stops_accepting() {
    let h = harness(&policy_yaml(1, "enforce"), PATIENCE).await;
    h.state.start_draining();
    // The accept loop notices and drops the listener: new connections are refused (or, if
    // one raced into the backlog, closed without an answer).
    let outcome = tokio::time::timeout(PATIENCE, async {
        loop {
            match TcpStream::connect(h.proxy).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break e.kind(),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(mut s) => {
                    let _ = s
                        .write_all(b"CONNECT allowed.test:1 HTTP/1.1\r\n\r\n")
                        .await;
                    let mut buf = [0u8; 1];
                    if matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(outcome, std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn admin_endpoints() {
    let h = harness(&policy_yaml(1, "enforce"), PATIENCE).await;
    let l = listener::bind_one("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(admin::serve(l, h.state.clone(), h.metrics.clone()));
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (status, _, body) = read_response(&mut s).await;
        (status, body)
    }
    assert_eq!(get(addr, "/live").await.0, 200);
    assert_eq!(get(addr, "/ready").await.0, 200);
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE palisade_sidecar_denials_total counter"),
        "{metrics}"
    );
    assert_eq!(get(addr, "/nope").await.0, 404);
    h.state.start_draining();
    assert_eq!(get(addr, "/ready").await, (503, "draining\n".to_owned()));
    assert_eq!(get(addr, "/live").await.0, 200);
}

/// An upstream that answers any `Upgrade` with 101 (naming the first offered protocol) and
/// then echoes bytes.
async fn upgrade_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(
                    |mut req: hyper::Request<hyper::body::Incoming>| async move {
                        let Some(offered) = req.headers().get("upgrade").cloned() else {
                            let resp = hyper::Response::new(Full::new(Bytes::from("no upgrade")));
                            return Ok::<_, std::convert::Infallible>(resp);
                        };
                        let on_upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = on_upgrade.await {
                                let mut io = TokioIo::new(up);
                                let mut buf = [0u8; 1024];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        let first = offered.to_str().unwrap().split(',').next().unwrap().trim();
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                        resp.headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        resp.headers_mut().insert("upgrade", first.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_upgrades_are_relayed_after_the_decision() {
    let up = upgrade_server().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(
        format!(
            "GET http://allowed.test:{port}/ws HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, _) = read_response(&mut s).await;
    assert_eq!(status, 101, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    s.write_all(b"ping over the upgraded connection")
        .await
        .unwrap();
    let mut back = [0u8; 33];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping over the upgraded connection");
    // Still counted as one active connection while the upgraded stream is open.
    assert_eq!(h.metrics.active_connections.get(), 1);
}

/// What a [`recorder`] upstream got on one connection.
#[derive(Debug, Clone, Default)]
struct Recorded {
    /// Every byte received, in order.
    bytes: Vec<u8>,
    /// Request heads it answered (complete requests only).
    answered: usize,
    /// The peer closed the connection.
    closed: bool,
}

type Recordings = Arc<parking_lot::Mutex<Vec<Recorded>>>;

/// A raw HTTP/1 upstream that records every byte of every connection. It answers each
/// complete request (Content-Length or chunked body) with `200 ok`; a request offering an
/// `Upgrade` is answered `101` naming the offered protocol (as an h2c server would), after
/// which it only records.
async fn recorder() -> (SocketAddr, Recordings) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let all: Recordings = Arc::default();
    let conns = all.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let slot = {
                let mut v = conns.lock();
                v.push(Recorded::default());
                v.len() - 1
            };
            let conns = conns.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut switched = false;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    conns.lock()[slot].bytes.extend_from_slice(&buf[..n]);
                    if switched {
                        continue;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some((len, upgrade)) = complete_request(&pending) {
                        pending.drain(..len);
                        conns.lock()[slot].answered += 1;
                        let answer = match upgrade {
                            Some(proto) => {
                                switched = true;
                                format!(
                                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\n\r\n"
                                )
                            }
                            None => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned(),
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() || switched {
                            break;
                        }
                    }
                }
                conns.lock()[slot].closed = true;
            });
        }
    });
    (addr, all)
}

/// The length of the first complete request in `buf` and the protocol it offers to upgrade
/// to, if it is complete.
fn complete_request(buf: &[u8]) -> Option<(usize, Option<String>)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else {
        return None;
    };
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let upgrade = value("upgrade").map(|v| v.split(',').next().unwrap_or_default().to_owned());
    let body = &buf[head..];
    let len = if let Some(cl) = value("content-length") {
        let cl: usize = cl.parse().ok()?;
        (body.len() >= cl).then_some(cl)?
    } else if value("transfer-encoding").is_some() {
        body.windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .map(|p| p + 5)?
    } else {
        0
    };
    Some((head + len, upgrade))
}

fn recorded(r: &Recordings) -> Vec<Recorded> {
    r.lock().clone()
}

/// Everything the recorder got, as text (lossy), all connections.
fn recorded_text(r: &Recordings) -> String {
    recorded(r)
        .iter()
        .map(|c| String::from_utf8_lossy(&c.bytes).into_owned())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Send `raw` on a fresh explicit-proxy connection (optionally shutting the write side
/// afterwards) and read one response.
async fn explicit(h: &Harness, raw: &[u8], shutdown: bool) -> (u16, String, String) {
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(raw).await.unwrap();
    if shutdown {
        s.shutdown().await.unwrap();
    }
    read_response(&mut s).await
}

#[tokio::test]
async fn h2c_and_other_upgrades_are_removed_not_relayed() {
    let (up, rec) = recorder().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    for (i, upgrade) in ["h2c", "H2C", "echo", "h2c, TLS/1.2"].iter().enumerate() {
        // Absolute form on the explicit proxy, with a rule without and one with HTTP rules.
        for host in ["allowed.test", "rules.test"] {
            let raw = format!(
                "GET http://{host}:{port}/u{i} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
            );
            let (status, head, body) = explicit(&h, raw.as_bytes(), false).await;
            assert_eq!(
                (status, body.as_str()),
                (200, "ok"),
                "{upgrade} {host}: {head}"
            );
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
        }
    }
    // Plain HTTP inside a CONNECT tunnel.
    let (mut s, status, _, _) = connect(&h, &format!("allowed.test:{port}")).await;
    assert_eq!(status, 200);
    s.write_all(
        format!(
            "GET /in-tunnel HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: upgrade, http2-settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!((status, body.as_str()), (200, "ok"), "{head}");
    // What reached the upstream: every request, none of them offering a switch.
    let seen = recorded_text(&rec).to_ascii_lowercase();
    assert_eq!(seen.matches("get /").count(), 9, "{seen}");
    assert!(seen.contains("get /in-tunnel http/1.1"), "{seen}");
    assert!(!seen.contains("upgrade"), "{seen}");
    assert!(!seen.contains("http2-settings"), "{seen}");
}

/// An upstream that answers every request head with `101` to `proto`, whatever was asked.
async fn always_switches(proto: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_switch_the_sidecar_did_not_ask_for_is_not_relayed() {
    let up = always_switches("h2c").await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    for upgrade in ["h2c", "websocket"] {
        let raw = format!(
            "GET http://allowed.test:{port}/x HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\r\n"
        );
        let mut s = TcpStream::connect(h.proxy).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let (status, head, body) = read_response(&mut s).await;
        assert_eq!(status, 502, "{upgrade}: {head}{body}");
        assert!(body.contains("does not relay"), "{body}");
        // Nothing of the upstream's other protocol reaches the agent; the connection closes.
        assert!(closed_without_data(&mut s).await, "{upgrade}");
    }
    assert_eq!(
        h.metrics.upstream_errors.with_label_values(&["http"]).get(),
        2
    );

    // WebSocket offered beside h2c: only WebSocket goes upstream (and is relayed).
    let (up, rec) = recorder().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    let raw = format!(
        "GET http://allowed.test:{port}/ws HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n"
    );
    let (status, _, _) = explicit(&h, raw.as_bytes(), false).await;
    assert_eq!(status, 101);
    let seen = recorded_text(&rec).to_ascii_lowercase();
    assert!(seen.contains("upgrade: websocket\r\n"), "{seen}");
    assert!(!seen.contains("h2c"), "{seen}");
}

#[tokio::test]
async fn path_parameters_are_refused_before_the_upstream() {
    let (up, rec) = recorder().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    for path in [
        "/ok/secret;x=1/y",
        "/ok/x/..;/secret",
        "/a;",
        "/a%3Bb/c",
        "/a%3bb",
    ] {
        let raw = format!(
            "GET http://rules.test:{port}{path} HTTP/1.1\r\nHost: rules.test:{port}\r\n\r\n"
        );
        let (status, _, body) = explicit(&h, raw.as_bytes(), false).await;
        assert_eq!(status, 400, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "bad_request", "{path}");
        assert!(
            json["reason"].as_str().unwrap().contains("ambiguous path"),
            "{body}"
        );
    }
    assert!(recorded(&rec).is_empty(), "{}", recorded_text(&rec));
    assert_eq!(
        h.metrics
            .bad_input
            .with_label_values(&["ambiguous_path"])
            .get(),
        5
    );
    // Without HTTP rules the path does not matter: forwarded as sent.
    let raw = format!(
        "GET http://allowed.test:{port}/a;jsessionid=1 HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"
    );
    let (status, _, _) = explicit(&h, raw.as_bytes(), false).await;
    assert_eq!(status, 200);
    assert!(recorded_text(&rec).contains("GET /a;jsessionid=1 HTTP/1.1"));
}

#[tokio::test]
async fn method_overrides_are_decided_with_the_method() {
    let (up, rec) = recorder().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    let send = |host: &str, path: &str, extra: &str, body: &str| {
        format!(
            "{} http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            if body.is_empty() { "GET" } else { "POST" },
            body.len()
        )
    };
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    // (request, expected status, marker path)
    let cases = [
        // rules.test is read-only: GET with a DELETE / PUT override is refused.
        (
            send(
                "rules.test",
                "/h1",
                "X-HTTP-Method-Override: DELETE\r\n",
                "",
            ),
            403,
        ),
        (send("rules.test", "/h2", "X-HTTP-Method: put\r\n", ""), 403),
        (
            send("rules.test", "/h3", "X-Method-Override: PATCH\r\n", ""),
            403,
        ),
        (send("rules.test", "/q1?_method=DELETE", "", ""), 403),
        (send("rules.test", "/q2?a=1&%5Fmethod=delete", "", ""), 403),
        // Allowed overrides pass, unchanged.
        (
            send("rules.test", "/ok1", "X-HTTP-Method-Override: HEAD\r\n", ""),
            200,
        ),
        (send("rules.test", "/ok2?_method=GET", "", ""), 200),
        // Not a method token: 400.
        (
            send(
                "rules.test",
                "/b1",
                "X-HTTP-Method-Override: GET, DELETE\r\n",
                "",
            ),
            400,
        ),
        (send("rules.test", "/b2?_method=", "", ""), 400),
        // forms.test is read-write (no DELETE): `_method` in a urlencoded body counts.
        (send("forms.test", "/f1", form, "a=1&_method=DELETE"), 403),
        (send("forms.test", "/f2", "", "_method=delete"), 403),
        (send("forms.test", "/f3", form, "a=1&_method=PATCH"), 200),
        (
            send(
                "forms.test",
                "/f4",
                "Content-Type: application/json\r\n",
                "{\"_method\":\"DELETE\"}",
            ),
            200,
        ),
        (send("forms.test", "/f5", form, "_method=DE LETE"), 400),
    ];
    for (raw, want) in &cases {
        let (status, _, body) = explicit(&h, raw.as_bytes(), false).await;
        assert_eq!(status, *want, "{raw}: {body}");
    }
    // A urlencoded body too long to check: 413, not forwarded.
    let big = format!(
        "a={}&_method=DELETE",
        "x".repeat(4 * super::http::PREREAD_LIMIT)
    );
    let (status, _, body) =
        explicit(&h, send("forms.test", "/f6", form, &big).as_bytes(), false).await;
    assert_eq!(status, 413, "{body}");
    let seen = recorded_text(&rec);
    for (raw, want) in &cases {
        let marker = raw
            .split(' ')
            .nth(1)
            .unwrap()
            .split(&format!("{port}"))
            .nth(1)
            .unwrap();
        let reached = seen.contains(&format!(" {marker} HTTP/1.1"));
        assert_eq!(reached, *want == 200, "{marker}: {seen}");
    }
    assert!(!seen.contains("/f6"), "{seen}");
    // …unless no method could be refused there: then no override can matter, and the
    // form is forwarded unread.
    let (status, _, body) = explicit(
        &h,
        send("paths.test", "/open/f7", form, &big).as_bytes(),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let m = &h.metrics;
    assert_eq!(
        m.bad_input
            .with_label_values(&["bad_method_override"])
            .get(),
        3
    );
    assert_eq!(m.bad_input.with_label_values(&["form_too_large"]).get(), 1);
    assert_eq!(
        m.denials
            .with_label_values(&["no_matching_http_rule"])
            .get(),
        7
    );
}

/// A chunked POST head for `host` on `port`.
fn chunked_head(host: &str, port: u16, path: &str) -> Vec<u8> {
    format!(
        "POST http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn broken_bodies_are_refused_before_anything_goes_upstream() {
    let (up, rec) = recorder().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    let cases: [(&str, &[u8], bool); 6] = [
        ("bad chunk size", b"zz\r\nabc\r\n0\r\n\r\n", false),
        (
            "missing CRLF after data",
            b"3\r\nabcdef\r\n0\r\n\r\n",
            false,
        ),
        ("bare LF chunk line", b"3\nabc\r\n0\r\n\r\n", false),
        ("truncated chunk", b"10\r\nabc", true),
        ("truncated before the last chunk", b"3\r\nabc\r\n", true),
        ("bad trailers", b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n", false),
    ];
    for (what, body, shutdown) in cases {
        // Without HTTP rules, and with HTTP rules that allow the POST.
        for host in ["allowed.test", "forms.test"] {
            let mut raw = chunked_head(host, port, "/broken");
            raw.extend_from_slice(body);
            let (status, head, json) = explicit(&h, &raw, shutdown).await;
            assert_eq!(status, 400, "{what} ({host}): {head}{json}");
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&json).unwrap()["reason"],
                "malformed request body",
                "{what}"
            );
        }
    }
    // Content-Length body cut short.
    let raw = format!(
        "POST http://allowed.test:{port}/short HTTP/1.1\r\nHost: allowed.test:{port}\r\nContent-Length: 100\r\n\r\nabc"
    );
    let (status, _, _) = explicit(&h, raw.as_bytes(), true).await;
    assert_eq!(status, 400);
    // The upstream was never even connected to.
    assert!(recorded(&rec).is_empty(), "{}", recorded_text(&rec));
    assert_eq!(
        h.metrics
            .bad_input
            .with_label_values(&["malformed_body"])
            .get(),
        13
    );
    assert_eq!(
        h.metrics.upstream_errors.with_label_values(&["http"]).get(),
        0
    );

    // Control: a well-formed chunked body is sent complete.
    let mut raw = chunked_head("allowed.test", port, "/fine");
    raw.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
    let (status, _, body) = explicit(&h, &raw, false).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let got = recorded(&rec);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].answered, 1);
}

#[tokio::test]
async fn a_body_that_breaks_after_the_window_never_completes_upstream() {
    let (up, rec) = recorder().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(&chunked_head("allowed.test", port, "/long"))
        .await
        .unwrap();
    // More than the window in good chunks, then a broken chunk line.
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..6 {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    // Wait until the window went upstream, then break the body.
    let started = tokio::time::timeout(PATIENCE, async {
        while recorded(&rec)
            .first()
            .is_none_or(|c| c.bytes.len() < super::http::PREREAD_LIMIT)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(started.is_ok(), "the start of the body never went upstream");
    s.write_all(b"nothex\r\n").await.unwrap();
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(status, 400, "{head}{body}");
    // The upstream connection was closed before the body's end: no complete request there.
    let closed = tokio::time::timeout(PATIENCE, async {
        while !recorded(&rec).first().is_some_and(|c| c.closed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the upstream connection was not aborted");
    let got = recorded(&rec);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].answered, 0, "the upstream saw a complete request");
    assert!(!got[0].bytes.windows(5).any(|w| w == b"0\r\n\r\n"));
    assert_eq!(
        h.metrics.upstream_errors.with_label_values(&["http"]).get(),
        0
    );
    assert_eq!(
        h.metrics
            .bad_input
            .with_label_values(&["malformed_body"])
            .get(),
        1
    );
}

#[tokio::test]
async fn connection_cannot_strip_host_or_other_judged_headers() {
    let (up, rec) = recorder().await;
    let h = harness(&policy_yaml(up.port(), "enforce"), PATIENCE).await;
    let port = up.port();
    for host in ["allowed.test", "rules.test"] {
        let raw = format!(
            "POST http://{host}:{port}/c HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: host, content-length, content-type, cookie, authorization, x-hop\r\nContent-Type: text/plain\r\nCookie: c=1\r\nAuthorization: Basic eA==\r\nX-Hop: gone\r\nContent-Length: 2\r\n\r\nhi"
        );
        let (status, _, body) = explicit(&h, raw.as_bytes(), false).await;
        let want = if host == "rules.test" { 403 } else { 200 };
        assert_eq!(status, want, "{host}: {body}");
    }
    let raw = format!(
        "GET http://rules.test:{port}/c HTTP/1.1\r\nHost: rules.test:{port}\r\nConnection: Host, X-HTTP-Method-Override\r\nX-HTTP-Method-Override: HEAD\r\n\r\n"
    );
    let (status, _, _) = explicit(&h, raw.as_bytes(), false).await;
    assert_eq!(status, 200);
    // Origin form inside a CONNECT tunnel: Host is the only place the name is.
    let (mut s, status, _, _) = connect(&h, &format!("allowed.test:{port}")).await;
    assert_eq!(status, 200);
    s.write_all(
        format!("GET /tunnel HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: Host\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, _) = read_response(&mut s).await;
    assert_eq!(status, 200);
    let tunnel = format!("get /tunnel http/1.1\r\nhost: allowed.test:{port}\r\n");
    assert!(
        recorded_text(&rec).to_ascii_lowercase().contains(&tunnel),
        "{}",
        recorded_text(&rec)
    );
    let seen = recorded_text(&rec).to_ascii_lowercase();
    assert_eq!(
        seen.matches(&format!("host: allowed.test:{port}\r\n"))
            .count(),
        2,
        "{seen}"
    );
    assert_eq!(
        seen.matches(&format!("host: rules.test:{port}\r\n"))
            .count(),
        1,
        "{seen}"
    );
    for kept in [
        "content-length: 2",
        "content-type: text/plain",
        "cookie: c=1",
        "authorization: basic ea==",
        "x-http-method-override: head",
    ] {
        assert!(seen.contains(kept), "{kept}: {seen}");
    }
    assert!(!seen.contains("x-hop"), "{seen}");
    assert!(!seen.contains("connection: host"), "{seen}");
}
