//! Bad input: every malformed credential or request is a clear 4xx with a
//! JSON ErrorBody, counted by reason, never a 5xx.
#![allow(clippy::unwrap_used)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Method;
use jsonwebtoken::{Algorithm, Header};
use palisade_gateway::fsutil::now;
use palisade_gateway::tokens::SandboxClaims;
use support::*;

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A token with an arbitrary header and claims and a junk signature.
fn unsigned(header: serde_json::Value, claims: &SandboxClaims) -> String {
    format!(
        "{}.{}.{}",
        b64(&header),
        b64(&serde_json::to_value(claims).unwrap()),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    )
}

#[tokio::test]
async fn every_bad_sandbox_jwt_is_a_counted_401() {
    let gw = Gw::start(&[]).await;
    let (id, good) = gw.sandbox_with_token(None).await;
    let tokens = &gw.running.state.tokens;
    let kid = tokens.keys().active().kid().to_owned();
    let t = now();
    let base = SandboxClaims {
        iss: tokens.issuer().to_owned(),
        sub: id.clone(),
        aud: palisade_api::SANDBOX_TOKEN_AUDIENCE.to_owned(),
        sandbox_id: id.clone(),
        iat: t,
        nbf: t,
        exp: t + 600,
        jti: "j1".into(),
        pod_uid: None,
    };
    let signed = |c: SandboxClaims| tokens.sign(&c).unwrap().0;
    let with_header = |h: Header, c: &SandboxClaims| {
        jsonwebtoken::encode(&h, c, tokens.keys().active().encoding_key()).unwrap()
    };
    let mut wrong_typ = Header::new(Algorithm::EdDSA);
    wrong_typ.typ = Some("JWT".into());
    wrong_typ.kid = Some(kid.clone());
    let mut no_kid = Header::new(Algorithm::EdDSA);
    no_kid.typ = Some(palisade_api::SANDBOX_TOKEN_TYP.into());
    // The good token with its signature's first character changed.
    let mut tampered = good.clone();
    let sig_start = tampered.rfind('.').unwrap() + 1;
    let c = if &tampered[sig_start..sig_start + 1] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(sig_start..sig_start + 1, c);
    let typ = palisade_api::SANDBOX_TOKEN_TYP;

    let cases: Vec<(&str, String)> = vec![
        ("malformed", "a.b.c".into()),
        ("malformed", "!!!.???.###".into()),
        (
            "too_large",
            format!("{}.{}.{}", "a".repeat(3000), "b".repeat(3000), "c"),
        ),
        (
            "alg_not_allowed",
            unsigned(serde_json::json!({"alg":"none","typ":typ,"kid":kid}), &base),
        ),
        (
            "alg_not_allowed",
            unsigned(
                serde_json::json!({"alg":"HS256","typ":typ,"kid":kid}),
                &base,
            ),
        ),
        (
            "alg_not_allowed",
            unsigned(
                serde_json::json!({"alg":"RS256","typ":typ,"kid":kid}),
                &base,
            ),
        ),
        (
            "alg_not_allowed",
            unsigned(
                serde_json::json!({"alg":"ES256","typ":typ,"kid":kid}),
                &base,
            ),
        ),
        ("wrong_typ", with_header(wrong_typ, &base)),
        ("missing_kid", with_header(no_kid, &base)),
        (
            "unknown_kid",
            unsigned(
                serde_json::json!({"alg":"EdDSA","typ":typ,"kid":"nope"}),
                &base,
            ),
        ),
        (
            "bad_signature",
            unsigned(
                serde_json::json!({"alg":"EdDSA","typ":typ,"kid":kid}),
                &base,
            ),
        ),
        ("bad_signature", tampered),
        (
            "expired",
            signed(SandboxClaims {
                iat: t - 4000,
                nbf: t - 4000,
                exp: t - 3000,
                ..base.clone()
            }),
        ),
        (
            "not_yet_valid",
            signed(SandboxClaims {
                nbf: t + 3000,
                exp: t + 4000,
                ..base.clone()
            }),
        ),
        (
            "wrong_audience",
            signed(SandboxClaims {
                aud: "someone-else".into(),
                ..base.clone()
            }),
        ),
        (
            "wrong_issuer",
            signed(SandboxClaims {
                iss: "https://evil.example".into(),
                ..base.clone()
            }),
        ),
        (
            "invalid_claims",
            signed(SandboxClaims {
                sandbox_id: "sbx-nope".into(),
                ..base.clone()
            }),
        ),
        (
            "invalid_claims",
            signed(SandboxClaims {
                sub: "someone".into(),
                ..base.clone()
            }),
        ),
    ];
    let mut expected = std::collections::BTreeMap::<&str, f64>::new();
    for (reason, token) in &cases {
        let a = post(&gw.client(Some(token)), "/v1/token:refresh").await;
        let body = assert_error(&a, 401, "unauthenticated");
        assert!(
            !body.reason.contains(token.as_str()),
            "never echo the token"
        );
        assert_eq!(a.headers.get("www-authenticate").unwrap(), "Bearer");
        *expected.entry(reason).or_default() += 1.0;
    }
    // Within leeway: a token that expired 10s ago still works (leeway 30s).
    let a = post(
        &gw.client(Some(&signed(SandboxClaims {
            exp: t - 10,
            ..base.clone()
        }))),
        "/v1/token:refresh",
    )
    .await;
    assert_eq!(a.status, 200);

    let m = gw.metrics().await;
    for (reason, n) in expected {
        let series = format!(
            r#"palisade_gateway_auth_failures_total{{authenticator="sandbox_jwt",reason="{reason}"}}"#
        );
        assert_eq!(sample(&m, &series), n, "{series}\n{m}");
    }
    assert_eq!(
        sample(
            &m,
            r#"palisade_gateway_requests_total{route="token_refresh",status_class="5xx"}"#
        ),
        0.0
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn bad_headers_bodies_and_paths_are_clear_4xx() {
    let gw = Gw::start(&["--max-body-bytes", "2048"]).await;
    let admin = gw.admin();

    // Authorization header shapes.
    for value in ["Basic abc", "Bearer", "Bearer ", "token"] {
        let a = gw
            .client(None)
            .send_with(
                Method::GET,
                "/v1/sandboxes",
                None,
                Bytes::new(),
                &[("authorization", value)],
            )
            .await
            .unwrap();
        assert_error(&a, 401, "unauthenticated");
    }
    assert_error(
        &get(&gw.client(Some("not-a-known-credential")), "/v1/sandboxes").await,
        401,
        "unauthenticated",
    );
    assert_error(
        &get(&gw.client(Some("pbt_unknown")), "/v1/sandboxes").await,
        401,
        "unauthenticated",
    );
    // No credential on a protected route: 401, never anonymous access.
    assert_error(
        &get(&gw.client(None), "/v1/sandboxes").await,
        401,
        "unauthenticated",
    );

    // Bodies.
    let big = Bytes::from(vec![b'x'; 4096]);
    let a = admin
        .send(Method::POST, "/v1/sandboxes", Some("application/json"), big)
        .await
        .unwrap();
    assert_error(&a, 413, "body_too_large");
    let a = admin
        .send(
            Method::POST,
            "/v1/sandboxes",
            Some("application/json"),
            Bytes::from_static(b"{not json"),
        )
        .await
        .unwrap();
    assert_error(&a, 400, "invalid_json");
    let a = post_json(
        &admin,
        "/v1/sandboxes",
        &serde_json::json!({"name": "Bad Name"}),
    )
    .await;
    assert_error(&a, 400, "invalid_sandbox");
    let a = post_json(
        &admin,
        "/v1/sandboxes",
        &serde_json::json!({"name": "ok", "extra": 1}),
    )
    .await;
    assert_error(&a, 400, "invalid_json");
    let a = put(&admin, "/v1/policies/web", "{{{{").await;
    assert_error(&a, 422, "invalid_policy");
    let a = put(&admin, "/v1/policies/web", &"a".repeat(4000)).await;
    assert_error(&a, 413, "body_too_large");

    // Paths and methods.
    assert_error(&get(&admin, "/v2/nothing").await, 404, "not_found");
    assert_error(
        &get(&admin, &format!("/v1/{}", "a".repeat(1000))).await,
        404,
        "not_found",
    );
    let a = admin
        .send(Method::PATCH, "/v1/sandboxes", None, Bytes::new())
        .await
        .unwrap();
    assert_error(&a, 405, "method_not_allowed");
    // RFC 9110: a 405 names the methods the path does support.
    assert_eq!(a.headers.get("allow").unwrap(), "POST, GET");
    assert_error(
        &get(&admin, "/v1/sandboxes/not-an-id").await,
        404,
        "not_found",
    );
    assert_error(
        &get(&admin, "/v1/policies/NOT_A_NAME").await,
        404,
        "not_found",
    );

    let m = gw.metrics().await;
    assert!(!m.contains(r#"status_class="5xx""#), "{m}");
    assert_eq!(
        sample(
            &m,
            r#"palisade_gateway_auth_failures_total{authenticator="header",reason="malformed_header"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(
            &m,
            r#"palisade_gateway_auth_failures_total{authenticator="chain",reason="unrecognized"}"#
        ),
        1.0
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_minted() {
    let gw = Gw::start(&[]).await;
    let c = gw.client(None);
    let a = c
        .send_with(
            Method::GET,
            "/.well-known/jwks.json",
            None,
            Bytes::new(),
            &[("x-request-id", "abc-123")],
        )
        .await
        .unwrap();
    assert_eq!(a.headers.get("x-request-id").unwrap(), "abc-123");
    let a = c
        .send_with(
            Method::GET,
            "/.well-known/jwks.json",
            None,
            Bytes::new(),
            &[("x-request-id", "bad id\twith junk")],
        )
        .await
        .unwrap();
    let minted = a.headers.get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(minted.len(), 36, "a UUID was minted: {minted}");
    gw.running.shutdown().await;
}
