//! `palisade sandbox exec` (the real CLI binary) against an in-process gateway and
//! its exec relay; the sandbox side is played by this test: it holds the sidecar's
//! session, dials back on the relay request and answers the exec frames like the shim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // helpers outside #[test] fns; a panic is the failure report

mod support;

use std::process::Stdio;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use palisade_api::exec::{ExecExit, Frame, write_frame};
use palisade_api::session::SessionEvent;
use support::*;
use tokio::io::AsyncWriteExt;

/// Generous bound against hangs only (never a timing assertion).
const PATIENCE: Duration = Duration::from_secs(60);

const POLICY: &str = r#"apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata:
  name: web
spec:
  egress:
    - name: example
      hosts: [example.com]
      ports: [443]
"#;

/// Wait on the sandbox's session stream for the next relay request.
async fn next_relay(body: &mut Incoming, buf: &mut Vec<u8>) -> String {
    loop {
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let event: SessionEvent = serde_json::from_slice(&line[..line.len() - 1]).unwrap();
            if let SessionEvent::Relay { relay_id } = event {
                return relay_id;
            }
        }
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("session stream stalled")
            .expect("session stream ended")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
}

fn cli(gw: &Gw, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.args(["sandbox", "exec"])
        .env_remove("PALISADE_GATEWAY")
        .env("PALISADE_CONTEXT", gw.dir.path().join("no-context.json"))
        .arg("--gateway")
        .arg(format!("http://{}", gw.running.api_addr))
        .arg("--token-file")
        .arg(gw.dir.path().join("admin-token"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn exec_cli_runs_through_the_relay_and_exits_with_the_remote_status() {
    let gw = Gw::start(&[]).await;
    put(&gw.admin(), "/v1/policies/web", POLICY).await;
    let (id, token) = gw.sandbox_with_token(Some("web")).await;

    // Not connected yet (409 sandbox_not_connected): a clear message, exit 1.
    let out = cli(&gw, &["demo", "--", "id"]).output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not connected to the gateway"), "{err}");

    // An unknown name.
    let out = cli(&gw, &["nope", "--", "id"]).output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no sandbox named `nope`"), "{err}");

    // The sidecar's session.
    let resp = send(
        &gw,
        Method::GET,
        &format!("/v1/sandboxes/{id}/session"),
        &token,
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut session = resp.into_body();
    let mut buf = Vec::new();

    let mut child = cli(&gw, &["demo", "-i", "--", "cat", "-n"])
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\nworld\n").await.unwrap();
    drop(stdin);

    let relay_id = next_relay(&mut session, &mut buf).await;
    let mut shim = upgraded(
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

    // Play the shim: echo stdin until EOF, then report exit code 3.
    let Frame::Open(open) = next_frame(&mut shim).await else {
        panic!("the CLI must send open first");
    };
    assert_eq!(open.argv, vec!["cat".to_owned(), "-n".to_owned()]);
    assert!(!open.tty);
    let mut input = Vec::new();
    loop {
        match next_frame(&mut shim).await {
            Frame::Stdin(bytes) => {
                input.extend_from_slice(&bytes);
                write_frame(&mut shim, &Frame::Stdout(bytes)).await.unwrap();
            }
            Frame::StdinEof => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(input, b"hello\nworld\n");
    write_frame(&mut shim, &Frame::Stderr(b"to stderr\n".to_vec()))
        .await
        .unwrap();
    write_frame(
        &mut shim,
        &Frame::Exit(ExecExit {
            code: Some(3),
            signal: None,
        }),
    )
    .await
    .unwrap();

    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(out.stdout, b"hello\nworld\n");
    assert_eq!(err, "to stderr\n");

    // Without -i the command's stdin is empty at once; a signal exit is 128+n.
    let mut child = cli(&gw, &["demo", "--", "sh"]).spawn().unwrap();
    let relay_id = next_relay(&mut session, &mut buf).await;
    let mut shim = upgraded(
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
    assert!(matches!(next_frame(&mut shim).await, Frame::Open(_)));
    assert_eq!(next_frame(&mut shim).await, Frame::StdinEof);
    write_frame(
        &mut shim,
        &Frame::Exit(ExecExit {
            code: None,
            signal: Some(9),
        }),
    )
    .await
    .unwrap();
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(137));
    gw.running.shutdown().await;
}
