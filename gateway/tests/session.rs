//! Sidecar sessions, secrets and the exec relay, end to end in-process: a
//! real gateway on 127.0.0.1:0, real sandbox JWTs and admin token, raw hyper
//! client connections for the NDJSON stream and both HTTP/1.1 upgrades.
#![allow(clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use palisade_api::exec::{ExecExit, ExecOpen, Frame, write_frame};
use palisade_api::session::{CredentialBinding, SessionEvent};
use support::*;

/// Generous bound against hangs only (never a timing assertion).
const PATIENCE: Duration = Duration::from_secs(30);

const SECRET_V1: &str = "ghp_first-secret-value-4f1d2a";
const SECRET_V2: &str = "ghp_second-secret-value-9c3e7b";

fn policy(comment: &str) -> String {
    format!(
        r#"apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata:
  name: web
spec:
  credentials:
    gh:
      from: {{secret: {{name: github, key: token}}}}
  egress:
    - name: gh-api
      hosts: [api.github.com, "*.githubusercontent.com"]
      ports: [443]
      credential: gh
      http:
        allow:
          - {{methods: [GET], path: "/repos/**"}}
# {comment}
"#
    )
}

/// The secret, allowed for the cluster-wide policy `web` and the hosts it binds.
async fn put_secret(gw: &Gw, name: &str, value: &str) -> Answer {
    put_secret_allowing(
        gw,
        name,
        value,
        &[],
        &["web"],
        &["api.github.com:443", "*.githubusercontent.com:443"],
    )
    .await
}

use palisade_gateway::client::Answer;

#[tokio::test]
async fn session_delivers_policy_and_credentials_and_follows_changes() {
    let gw = Gw::start(&[]).await;
    assert_eq!(put_secret(&gw, "github", SECRET_V1).await.status, 200);
    assert_eq!(
        put(&gw.admin(), "/v1/policies/web", &policy("v1"))
            .await
            .status,
        200
    );
    let (id, token) = gw.sandbox_with_token(Some("web")).await;

    let mut s = Session::start(&gw, &id, &token).await;
    // Order at connect: Hello, Policy, Credentials.
    let SessionEvent::Hello {
        sandbox_id,
        heartbeat_seconds,
        session_id,
    } = s.next().await
    else {
        panic!("first event must be hello");
    };
    assert_eq!(sandbox_id, id);
    assert_eq!(heartbeat_seconds, 15);
    assert!(!session_id.is_empty());
    let SessionEvent::Policy {
        revision,
        policy: doc,
    } = s.next().await
    else {
        panic!("second event must be policy");
    };
    assert_eq!(doc, policy("v1"));
    let SessionEvent::Credentials {
        revision: cred_rev,
        credentials,
    } = s.next().await
    else {
        panic!("third event must be credentials");
    };
    assert_eq!(cred_rev, revision);
    assert_eq!(credentials.len(), 1);
    assert_eq!(credentials[0].name, "gh");
    assert_eq!(credentials[0].value, SECRET_V1);
    assert_eq!(
        credentials[0].bindings,
        vec![
            CredentialBinding {
                host: "api.github.com".into(),
                port: 443,
                paths: vec!["/repos/**".into()],
            },
            CredentialBinding {
                host: "*.githubusercontent.com".into(),
                port: 443,
                paths: vec!["/repos/**".into()],
            },
        ]
    );
    let m = gw.metrics().await;
    assert_eq!(sample(&m, "palisade_gateway_sessions_live"), 1.0);

    // A policy write pushes the new revision (and its credentials).
    let written = put(&gw.admin(), "/v1/policies/web", &policy("v2")).await;
    let new_rev = written.json().unwrap()["revision"].as_u64().unwrap();
    match s.next().await {
        SessionEvent::Policy {
            revision,
            policy: doc,
        } => {
            assert_eq!(revision, new_rev);
            assert_eq!(doc, policy("v2"));
        }
        other => panic!("expected policy, got {other:?}"),
    }
    match s.next().await {
        SessionEvent::Credentials { revision, .. } => assert_eq!(revision, new_rev),
        other => panic!("expected credentials, got {other:?}"),
    }

    // A secret update pushes new credentials, same policy revision.
    assert_eq!(put_secret(&gw, "github", SECRET_V2).await.status, 200);
    match s.next().await {
        SessionEvent::Credentials {
            revision,
            credentials,
        } => {
            assert_eq!(revision, new_rev);
            assert_eq!(credentials[0].value, SECRET_V2);
        }
        other => panic!("expected credentials, got {other:?}"),
    }

    // Deleting the secret: the credential is omitted (fail closed on the sidecar).
    let del = delete(&gw.admin(), "/v1/secrets/github").await;
    assert_eq!(del.status, 200);
    match s.next().await {
        SessionEvent::Credentials { credentials, .. } => assert!(credentials.is_empty()),
        other => panic!("expected credentials, got {other:?}"),
    }

    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"palisade_gateway_session_events_sent_total{type="credentials"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(
            &m,
            r#"palisade_gateway_session_events_sent_total{type="policy"}"#
        ),
        2.0
    );

    // Deleting the sandbox ends its stream.
    assert_eq!(
        delete(&gw.admin(), &format!("/v1/sandboxes/{id}"))
            .await
            .status,
        200
    );
    loop {
        match s.next_any().await {
            None => break,
            Some(SessionEvent::Heartbeat { .. }) => continue,
            Some(other) => panic!("unexpected {other:?} after delete"),
        }
    }
    gw.running.shutdown().await;
}

#[tokio::test]
async fn session_only_for_the_own_sandbox() {
    let gw = Gw::start(&[]).await;
    put_secret(&gw, "github", SECRET_V1).await;
    assert_eq!(
        put(&gw.admin(), "/v1/policies/web", &policy("v1"))
            .await
            .status,
        200
    );
    let (a, _token_a) = gw.sandbox_with_token(Some("web")).await;
    let (_b, token_b) = gw.sandbox_with_token(Some("web")).await;

    let foreign = Session::open(&gw, &a, &token_b).await;
    assert_eq!(foreign.status(), 404);
    let foreign = foreign.into_body().collect().await.unwrap().to_bytes();
    let missing = Session::open(&gw, "sbx-0123456789abcdef0123456789abcdef", &token_b).await;
    assert_eq!(missing.status(), 404);
    let missing = missing.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(foreign, missing);
    assert!(!String::from_utf8_lossy(&foreign).contains(SECRET_V1));

    // An operator is not a sidecar: no session stream for the admin either.
    let admin = Session::open(&gw, &a, ADMIN_TOKEN).await;
    assert_eq!(admin.status(), 403);

    // Secret routes: admin only, and never a value in the answer.
    let sb = gw.client(Some(&token_b));
    assert_error(&get(&sb, "/v1/secrets").await, 403, "forbidden");
    let list = get(&gw.admin(), "/v1/secrets").await;
    assert_eq!(list.status, 200);
    let text = String::from_utf8_lossy(&list.body).into_owned();
    assert!(!text.contains(SECRET_V1), "{text}");
    let v = list.json().unwrap();
    assert_eq!(v["secrets"][0]["name"], "github");
    assert_eq!(v["secrets"][0]["keys"][0]["key"], "token");
    assert!(
        v["secrets"][0]["keys"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_error(
        &delete(&gw.admin(), "/v1/secrets/nope").await,
        404,
        "not_found",
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn secret_values_never_reach_metrics_or_logs() {
    let logs = capture_logs(tracing::Level::TRACE);

    let gw = Gw::start(&[]).await;
    put_secret(&gw, "github", SECRET_V1).await;
    assert_eq!(
        put(&gw.admin(), "/v1/policies/web", &policy("v1"))
            .await
            .status,
        200
    );
    let (id, token) = gw.sandbox_with_token(Some("web")).await;
    let mut s = Session::start(&gw, &id, &token).await;
    for _ in 0..3 {
        s.next().await;
    }
    put_secret(&gw, "github", SECRET_V2).await;
    match s.next().await {
        SessionEvent::Credentials { credentials, .. } => {
            assert_eq!(credentials[0].value, SECRET_V2);
        }
        other => panic!("{other:?}"),
    }
    // A malformed write must not echo the value either.
    let bad = gw
        .admin()
        .send(
            Method::PUT,
            "/v1/secrets/github",
            Some("application/json"),
            Bytes::from(format!(r#"{{"data": {{"token": "{SECRET_V1}", "n": 5}}}}"#)),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    assert!(!String::from_utf8_lossy(&bad.body).contains(SECRET_V1));

    let metrics = gw.metrics().await;
    drop(s);
    gw.running.shutdown().await;
    let logs = logs.text();
    // The capture works: the writes were logged, by name and fingerprint.
    assert!(
        logs.contains("secret stored") && logs.contains("github"),
        "{logs}"
    );
    assert!(logs.contains("sha256:"), "{logs}");
    for value in [SECRET_V1, SECRET_V2] {
        assert!(!logs.contains(value), "secret value in the logs");
        assert!(!metrics.contains(value), "secret value in /metrics");
    }
}

#[tokio::test]
async fn exec_relay_pairs_and_forwards_frames_with_limits() {
    let gw = Gw::start(&["--exec-max-per-sandbox", "1"]).await;
    put_secret(&gw, "github", SECRET_V1).await;
    assert_eq!(
        put(&gw.admin(), "/v1/policies/web", &policy("v1"))
            .await
            .status,
        200
    );
    let (id, token) = gw.sandbox_with_token(Some("web")).await;

    // No session yet: 409 sandbox_not_connected.
    let resp = send(
        &gw,
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        ADMIN_TOKEN,
        Some("palisade-exec"),
    )
    .await;
    assert_eq!(resp.status(), 409);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("sandbox_not_connected"));

    // A sandbox principal may never exec, not even in itself.
    let resp = send(
        &gw,
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        &token,
        Some("palisade-exec"),
    )
    .await;
    assert_eq!(resp.status(), 403);

    let mut s = Session::start(&gw, &id, &token).await;
    for _ in 0..3 {
        s.next().await;
    }

    // Exec as admin: the gateway asks the session for a relay...
    let exec = {
        let mut c = connect(&gw).await;
        let req = request(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            ADMIN_TOKEN,
            Some("palisade-exec"),
        );
        tokio::spawn(async move { c.send_request(req).await.unwrap() })
    };
    let SessionEvent::Relay { relay_id } = s.next().await else {
        panic!("expected a relay request");
    };

    // ...another sandbox cannot take it (same 404 as a missing sandbox)...
    let (other, other_token) = gw.sandbox_with_token(Some("web")).await;
    let foreign = send(
        &gw,
        Method::POST,
        &format!("/v1/sandboxes/{id}/relays/{relay_id}"),
        &other_token,
        Some("palisade-relay"),
    )
    .await;
    assert_eq!(foreign.status(), 404);
    let foreign = foreign.into_body().collect().await.unwrap().to_bytes();
    let missing = gw
        .client(Some(&other_token))
        .send(
            Method::GET,
            "/v1/sandboxes/sbx-0123456789abcdef0123456789abcdef",
            None,
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(foreign, missing.body);
    let wrong_relay = send(
        &gw,
        Method::POST,
        &format!("/v1/sandboxes/{other}/relays/{relay_id}"),
        &other_token,
        Some("palisade-relay"),
    )
    .await;
    assert_eq!(wrong_relay.status(), 404);

    // ...the sandbox dials back and both sides are upgraded.
    let mut sandbox_io = upgraded(
        send(
            &gw,
            Method::POST,
            &format!("/v1/sandboxes/{id}/relays/{relay_id}"),
            &token,
            Some("palisade-relay"),
        )
        .await,
    )
    .await;
    let exec_resp = tokio::time::timeout(PATIENCE, exec).await.unwrap().unwrap();
    assert_eq!(exec_resp.status(), 101);
    assert_eq!(
        exec_resp.headers().get(header::UPGRADE).unwrap(),
        "palisade-exec"
    );
    let mut client_io = TokioIo::new(hyper::upgrade::on(exec_resp).await.unwrap());

    // At the limit (1): a second exec gets 429 while this one is open.
    let second = send(
        &gw,
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        ADMIN_TOKEN,
        Some("palisade-exec"),
    )
    .await;
    assert_eq!(second.status(), 429);

    // Frames both ways.
    let open = Frame::Open(ExecOpen {
        argv: vec!["id".into(), "-u".into()],
        tty: false,
        rows: 0,
        cols: 0,
    });
    write_frame(&mut client_io, &open).await.unwrap();
    assert_eq!(next_frame(&mut sandbox_io).await, open);
    write_frame(&mut client_io, &Frame::Stdin(b"input".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut sandbox_io).await,
        Frame::Stdin(b"input".to_vec())
    );
    write_frame(&mut sandbox_io, &Frame::Stdout(b"1000\n".to_vec()))
        .await
        .unwrap();
    let exit = Frame::Exit(ExecExit {
        code: Some(3),
        signal: None,
    });
    write_frame(&mut sandbox_io, &exit).await.unwrap();
    assert_eq!(
        next_frame(&mut client_io).await,
        Frame::Stdout(b"1000\n".to_vec())
    );
    assert_eq!(next_frame(&mut client_io).await, exit);

    // The session is over: audited, counted, and the slot is free again.
    let series = r#"palisade_gateway_exec_sessions_total{outcome="exited"}"#;
    let counted = tokio::time::timeout(PATIENCE, async {
        loop {
            if sample(&gw.metrics().await, series) == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "exec session never counted as exited");
    let exec = {
        let mut c = connect(&gw).await;
        let req = request(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            ADMIN_TOKEN,
            Some("palisade-exec"),
        );
        tokio::spawn(async move { c.send_request(req).await.unwrap() })
    };
    assert!(matches!(s.next().await, SessionEvent::Relay { .. }));
    drop(s);
    drop(exec);

    // Without the upgrade headers: 400 upgrade_required.
    let a = post(&gw.admin(), &format!("/v1/sandboxes/{id}/exec")).await;
    assert_error(&a, 400, "upgrade_required");
    gw.running.shutdown().await;
}
