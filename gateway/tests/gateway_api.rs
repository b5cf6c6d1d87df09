//! The gateway end to end in-process: sandboxes, tokens, revocation,
//! policies with revisions and long-poll, key rotation, metrics.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;

const DENY_ALL: &str = "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: web\nspec:\n  denyAll: true\n";

#[tokio::test]
async fn sandbox_token_lifecycle_and_revocation() {
    let gw = Gw::start(&[]).await;
    let (id, bootstrap) = gw.create_sandbox(None).await;
    assert!(bootstrap.starts_with("pbt_"));

    // The bootstrap token buys exactly one sandbox JWT.
    let issued = post(&gw.client(Some(&bootstrap)), "/v1/token:issue").await;
    assert_eq!(issued.status, 200);
    let issued = issued.json().unwrap();
    assert_eq!(issued["sandboxId"], id.as_str());
    let token = issued["token"].as_str().unwrap().to_owned();
    let again = post(&gw.client(Some(&bootstrap)), "/v1/token:issue").await;
    assert_error(&again, 401, "unauthenticated");

    // The JWT reaches its own sandbox.
    let sb = gw.client(Some(&token));
    let own = get(&sb, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(own.status, 200);
    assert_eq!(own.json().unwrap()["id"], id.as_str());

    // Refresh: same sandbox, new jti.
    let refreshed = post(&sb, "/v1/token:refresh").await;
    assert_eq!(refreshed.status, 200);
    let new_token = refreshed.json().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = |t: &str| {
        let (_, c) = gw
            .running
            .state
            .tokens
            .verify(t, palisade_gateway::fsutil::now())
            .unwrap();
        c
    };
    assert_ne!(claims(&token).jti, claims(&new_token).jti);
    assert_eq!(claims(&new_token).sandbox_id, id);

    // A sandbox may not list, create, or touch keys.
    assert_error(&get(&sb, "/v1/sandboxes").await, 403, "forbidden");
    assert_error(&post(&sb, "/v1/keys:rotate").await, 403, "forbidden");

    // Deleting the sandbox revokes both tokens at once.
    assert_eq!(
        delete(&gw.admin(), &format!("/v1/sandboxes/{id}"))
            .await
            .status,
        200
    );
    for t in [&token, &new_token] {
        let c = gw.client(Some(t));
        let e = assert_error(&post(&c, "/v1/token:refresh").await, 401, "unauthenticated");
        assert!(e.reason.contains("no longer exists"), "{e:?}");
    }
    let m = gw.metrics().await;
    assert_eq!(sample(&m, "palisade_gateway_tokens_issued_total"), 1.0);
    assert_eq!(sample(&m, "palisade_gateway_tokens_refreshed_total"), 1.0);
    assert_eq!(
        sample(
            &m,
            r#"palisade_gateway_auth_failures_total{authenticator="sandbox_jwt",reason="revoked"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            r#"palisade_gateway_auth_failures_total{authenticator="bootstrap",reason="unknown"}"#
        ),
        1.0
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn foreign_and_missing_sandboxes_look_the_same() {
    let gw = Gw::start(&[]).await;
    let (_a, token_a) = gw.sandbox_with_token(None).await;
    let (b, _) = gw.create_sandbox(None).await;
    let c = gw.client(Some(&token_a));
    let foreign = get(&c, &format!("/v1/sandboxes/{b}")).await;
    let missing = get(&c, "/v1/sandboxes/sbx-0123456789abcdef0123456789abcdef").await;
    let admin_missing = get(
        &gw.admin(),
        "/v1/sandboxes/sbx-0123456789abcdef0123456789abcdef",
    )
    .await;
    assert_error(&foreign, 404, "not_found");
    assert_eq!(foreign.body, missing.body);
    assert_eq!(foreign.body, admin_missing.body);
    assert_eq!(foreign.status, admin_missing.status);
    let foreign_policy = get(&c, &format!("/v1/sandboxes/{b}/policy")).await;
    assert_eq!(foreign_policy.body, missing.body);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn policies_validate_revise_and_long_poll() {
    let gw = Gw::start(&[]).await;
    let admin = gw.admin();

    // Invalid policies come back with field paths, and are not stored.
    let bad = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/testdata/invalid/host-tld-wildcard.yaml"
    ))
    .unwrap();
    let a = put(&admin, "/v1/policies/fixture", &bad).await;
    assert_error(&a, 422, "invalid_policy");
    let body: palisade_api::InvalidPolicyBody = serde_json::from_slice(&a.body).unwrap();
    assert!(
        body.errors
            .iter()
            .any(|e| e.path == "spec.egress[0].hosts[1]" && e.line == Some(9)),
        "{body:?}"
    );
    assert_error(&get(&admin, "/v1/policies/fixture").await, 404, "not_found");
    let a = put(&admin, "/v1/policies/other", DENY_ALL).await;
    let body: palisade_api::InvalidPolicyBody = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(body.errors[0].path, "metadata.name");

    // Valid: stored with a revision and an ETag.
    let first = put(&admin, "/v1/policies/web", DENY_ALL).await;
    assert_eq!(first.status, 200);
    let first_rev = first.json().unwrap()["revision"].as_u64().unwrap();
    let etag = first
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(first.json().unwrap()["etag"], etag.as_str());

    // The sandbox reads its own policy.
    let (id, token) = gw.sandbox_with_token(Some("web")).await;
    let sb = gw.client(Some(&token));
    let path = format!("/v1/sandboxes/{id}/policy");
    let got = get(&sb, &path).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json().unwrap()["document"], DENY_ALL);

    // Long-poll with nothing new: 304 after the wait.
    let unchanged = get(&sb, &format!("{path}?wait=1s&revision={first_rev}")).await;
    assert_eq!(unchanged.status, 304);

    // Long-poll woken by a write.
    let poll = {
        let sb = sb.clone();
        let path = format!("{path}?wait=30s&revision={first_rev}");
        tokio::spawn(async move { get(&sb, &path).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = put(
        &admin,
        "/v1/policies/web",
        &DENY_ALL.replace("true", "true # v2"),
    )
    .await;
    assert_eq!(second.status, 200);
    let second_rev = second.json().unwrap()["revision"].as_u64().unwrap();
    assert!(second_rev > first_rev);
    let woke = poll.await.unwrap();
    assert_eq!(woke.status, 200);
    assert_eq!(woke.json().unwrap()["revision"], second_rev);
    assert_ne!(woke.headers.get("etag").unwrap().to_str().unwrap(), etag);

    assert_error(
        &get(&sb, &format!("{path}?wait=soon")).await,
        400,
        "invalid_query",
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn key_rotation_online_keeps_old_tokens_valid() {
    let gw = Gw::start(&[]).await;
    let (_id, token) = gw.sandbox_with_token(None).await;
    let old_kid = gw.running.state.tokens.keys().active().kid().to_owned();

    let rotated = post(&gw.admin(), "/v1/keys:rotate").await;
    assert_eq!(rotated.status, 200);
    let keys = rotated.json().unwrap()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    let new_kid = keys.iter().find(|k| k["active"] == true).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_kid, old_kid);

    // Old token still works; its refresh is signed by the new key.
    let refreshed = post(&gw.client(Some(&token)), "/v1/token:refresh").await;
    assert_eq!(refreshed.status, 200);
    assert_eq!(refreshed.json().unwrap()["kid"], new_kid.as_str());

    // JWKS publishes both; OpenID configuration points at it.
    let jwks = get(&gw.client(None), "/.well-known/jwks.json")
        .await
        .json()
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()));
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519" && k.get("d").is_none())
    );
    let oidc = get(&gw.client(None), "/.well-known/openid-configuration")
        .await
        .json()
        .unwrap();
    assert_eq!(oidc["issuer"], gw.running.state.config.issuer.as_str());
    assert!(
        oidc["jwks_uri"]
            .as_str()
            .unwrap()
            .ends_with("/.well-known/jwks.json")
    );

    let m = gw.metrics().await;
    assert_eq!(sample(&m, "palisade_gateway_key_rotations_total"), 1.0);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn keys_and_sandboxes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let running = palisade_gateway::server::start(config(dir.path(), &[]))
        .await
        .unwrap();
    let gw = Gw { running, dir };
    let (id, token) = gw.sandbox_with_token(None).await;
    let Gw { running, dir } = gw;
    running.shutdown().await;
    let running = palisade_gateway::server::start(config(dir.path(), &[]))
        .await
        .unwrap();
    let gw = Gw { running, dir };
    let a = get(&gw.client(Some(&token)), &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        a.status, 200,
        "token minted before the restart still verifies"
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn admin_port_serves_live_ready_metrics_and_promtool_accepts_them() {
    let gw = Gw::start(&[]).await;
    // Some traffic so every family has samples.
    let (_id, token) = gw.sandbox_with_token(None).await;
    let _ = post(&gw.client(Some(&token)), "/v1/token:refresh").await;
    let _ = get(&gw.client(Some("garbage")), "/v1/sandboxes").await;
    let admin = palisade_gateway::client::GatewayClient::new(
        &format!("http://{}", gw.running.admin_addr),
        None,
        None,
    )
    .unwrap();
    assert_eq!(get(&admin, "/live").await.status, 200);
    assert_eq!(get(&admin, "/ready").await.status, 200);
    assert_eq!(
        get(&admin, "/v1/sandboxes").await.status,
        404,
        "no API on the admin port"
    );
    let scrape = gw.metrics().await;
    assert!(
        scrape.contains(
            r#"palisade_gateway_requests_total{route="sandbox_create",status_class="2xx"} 1"#
        ),
        "{scrape}"
    );
    assert!(scrape.contains("palisade_gateway_request_duration_seconds_bucket"));
    assert!(scrape.contains("palisade_gateway_signing_key_age_seconds"));
    assert!(!scrape.contains(&token) && !scrape.contains(ADMIN_TOKEN));

    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (apt-get install prometheus)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn keys_rotate_automatically_by_age_and_old_keys_are_pruned() {
    let gw = Gw::start(&["--key-rotation-interval", "1h", "--token-ttl", "10m"]).await;
    let state = &gw.running.state;
    let first = state.tokens.keys().active().kid().to_owned();
    let now = palisade_gateway::fsutil::now();
    assert_eq!(
        palisade_gateway::server::rotate_if_due(state, now + 60),
        None,
        "too young"
    );
    let second = palisade_gateway::server::rotate_if_due(state, now + 3600).expect("rotated");
    assert_ne!(second, first);
    // The old key verifies until ttl + leeway after its retirement, then goes.
    assert!(state.tokens.keys().get(&first, now + 3600 + 600).is_some());
    assert_eq!(
        palisade_gateway::server::rotate_if_due(state, now + 3600 + 700),
        None
    );
    assert!(state.tokens.keys().get(&first, now + 3600 + 700).is_none());
    assert_eq!(state.tokens.keys().infos().len(), 1);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn serves_h2_with_prior_knowledge() {
    use http_body_util::{BodyExt, Full};
    let gw = Gw::start(&[]).await;
    let tcp = tokio::net::TcpStream::connect(gw.running.api_addr)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/v1/sandboxes", gw.running.api_addr))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let list: palisade_api::SandboxList = serde_json::from_slice(&body).unwrap();
    assert!(list.sandboxes.is_empty());
    gw.running.shutdown().await;
}

#[tokio::test]
async fn slow_header_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gw::start(&["--header-read-timeout", "1s"]).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.running.api_addr)
        .await
        .unwrap();
    tcp.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the server must close (with or without a 408).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut buf)).await;
    let n = read
        .expect("server closed the slow connection")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    gw.running.shutdown().await;
}

#[tokio::test]
async fn policy_writes_honour_if_match_and_if_none_match() {
    use bytes::Bytes;
    use http::Method;
    let gw = Gw::start(&[]).await;
    let admin = gw.admin();
    let write = |extra: Vec<(&'static str, String)>, doc: &'static str| {
        let admin = admin.clone();
        async move {
            let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            admin
                .send_with(
                    Method::PUT,
                    "/v1/policies/web",
                    Some("application/yaml"),
                    Bytes::from(doc),
                    &extra,
                )
                .await
                .unwrap()
        }
    };
    let created = write(vec![("if-none-match", "*".into())], DENY_ALL).await;
    assert_eq!(created.status, 200);
    let etag = created
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_error(
        &write(vec![("if-none-match", "*".into())], DENY_ALL).await,
        412,
        "precondition_failed",
    );
    assert_error(
        &write(vec![("if-match", "\"r0-stale\"".into())], DENY_ALL).await,
        412,
        "precondition_failed",
    );
    let updated = write(vec![("if-match", etag.clone())], DENY_ALL).await;
    assert_eq!(updated.status, 200);
    assert_error(
        &write(vec![("if-match", etag)], DENY_ALL).await,
        412,
        "precondition_failed",
    );
    assert_error(
        &write(vec![("if-match", "*".into())], DENY_ALL).await,
        400,
        "invalid_header",
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn audit_events_are_pinned_to_the_callers_own_sandbox() {
    let gw = Gw::start(&[]).await;
    let (id, token) = gw.sandbox_with_token(None).await;
    let (other, _) = gw.create_sandbox(None).await;
    let sb = gw.client(Some(&token));
    let batch = serde_json::json!({"events": [{"decision": "deny", "host": "evil.example"}, {"decision": "allow"}]});
    let a = post_json(&sb, &format!("/v1/sandboxes/{id}/events"), &batch).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.json().unwrap()["accepted"], 2);
    let a = post_json(&sb, &format!("/v1/sandboxes/{other}/events"), &batch).await;
    assert_error(&a, 404, "not_found");
    let a = post_json(&gw.admin(), &format!("/v1/sandboxes/{id}/events"), &batch).await;
    assert_error(&a, 403, "forbidden");
    let too_many = serde_json::json!({"events": vec![serde_json::json!({}); 257]});
    assert_error(
        &post_json(&sb, &format!("/v1/sandboxes/{id}/events"), &too_many).await,
        400,
        "too_many_events",
    );
    let not_objects = serde_json::json!({"events": [1, 2]});
    assert_error(
        &post_json(&sb, &format!("/v1/sandboxes/{id}/events"), &not_objects).await,
        400,
        "invalid_json",
    );
    assert_eq!(
        sample(&gw.metrics().await, "palisade_gateway_audit_events_total"),
        2.0
    );
    gw.running.shutdown().await;
}

const WORKLOAD_POLICY: &str = "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: wl\nspec:\n  egress:\n    - name: r\n      hosts: [api.example.com]\n      ports: [443]\n      credential: c\n  credentials:\n    c:\n      from:\n        workloadToken: {audience: \"https://api.example.com\"}\n";

#[tokio::test]
async fn workload_tokens_only_for_audiences_the_policy_names() {
    let gw = Gw::start(&[]).await;
    assert_eq!(
        put(&gw.admin(), "/v1/policies/wl", WORKLOAD_POLICY)
            .await
            .status,
        200
    );
    let (id, token) = gw.sandbox_with_token(Some("wl")).await;
    let sb = gw.client(Some(&token));
    let path = format!("/v1/sandboxes/{id}/workload-tokens");
    let a = post_json(
        &sb,
        &path,
        &serde_json::json!({"audience": "https://api.example.com"}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let wl = a.json().unwrap()["token"].as_str().unwrap().to_owned();

    // Verifiable with the JWKS key, typed and audience-bound.
    let header = jsonwebtoken::decode_header(&wl).unwrap();
    assert_eq!(
        header.typ.as_deref(),
        Some(palisade_api::WORKLOAD_TOKEN_TYP)
    );
    let key = gw
        .running
        .state
        .tokens
        .keys()
        .get(
            header.kid.as_deref().unwrap(),
            palisade_gateway::fsutil::now(),
        )
        .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["https://api.example.com"]);
    let data = jsonwebtoken::decode::<palisade_gateway::tokens::WorkloadClaims>(
        &wl,
        key.decoding_key(),
        &v,
    )
    .unwrap();
    assert_eq!(data.claims.sandbox_id, id);
    assert!(data.claims.exp - data.claims.iat <= 15 * 60);

    // Not a gateway credential.
    let e = assert_error(
        &post(&gw.client(Some(&wl)), "/v1/token:refresh").await,
        401,
        "unauthenticated",
    );
    assert!(e.reason.contains("type"), "{e:?}");
    // Other audiences, sandboxes without a policy, foreign sandboxes, operators.
    let a = post_json(
        &sb,
        &path,
        &serde_json::json!({"audience": "https://evil.example"}),
    )
    .await;
    assert_error(&a, 403, "audience_not_allowed");
    let (bare_id, bare_token) = gw.sandbox_with_token(None).await;
    let a = post_json(
        &gw.client(Some(&bare_token)),
        &format!("/v1/sandboxes/{bare_id}/workload-tokens"),
        &serde_json::json!({"audience": "https://api.example.com"}),
    )
    .await;
    assert_error(&a, 403, "audience_not_allowed");
    let a = post_json(
        &gw.client(Some(&bare_token)),
        &path,
        &serde_json::json!({"audience": "https://api.example.com"}),
    )
    .await;
    assert_error(&a, 404, "not_found");
    let a = post_json(
        &gw.admin(),
        &path,
        &serde_json::json!({"audience": "https://api.example.com"}),
    )
    .await;
    assert_error(&a, 403, "forbidden");
    assert_eq!(
        sample(
            &gw.metrics().await,
            "palisade_gateway_workload_tokens_issued_total"
        ),
        1.0
    );
    gw.running.shutdown().await;
}
