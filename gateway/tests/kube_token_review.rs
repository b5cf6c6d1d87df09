//! `POST /v1/token:issue` with Kubernetes ServiceAccount tokens, against the
//! in-process strict fake kube-apiserver (`palisade-fake-apiserver`: real HTTPS,
//! real kubeconfig, real Pod objects with server-assigned uids, the gateway's real
//! kube client).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Method;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use palisade_fake_apiserver::{FakeApiServer, Mode, Verb};
use palisade_gateway::authn::kube::{
    DEFAULT_REVIEW_RATE_GLOBAL, DEFAULT_REVIEW_RATE_PER_TOKEN, ReviewRate,
};
use palisade_gateway::principal::SandboxId;
use support::{Gw, assert_error, get, post, sample};

const SA: &str = "palisade-sandbox";
const NS: &str = "sandboxes";
const AUD: &str = "palisade-gateway";
const EXTRA_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_UID: &str = "authentication.kubernetes.io/pod-uid";

/// A JWT-shaped ServiceAccount token (RS256 header, like the API server's);
/// the fake decides what it means by its exact text.
fn sa_token(label: &str) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"fake-sa-key"}"#);
    let p = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"{label}"}}"#).as_bytes());
    format!("{h}.{p}.c2lnbmF0dXJl")
}

fn status(user: &str, audiences: &[&str], extra: &[(&str, &[&str])]) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
        user: Some(UserInfo {
            username: Some(user.to_owned()),
            uid: Some("sa-uid".to_owned()),
            groups: Some(vec!["system:serviceaccounts".to_owned()]),
            extra: Some(
                extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                    .collect(),
            ),
        }),
        error: None,
    }
}

fn good_user() -> String {
    format!("system:serviceaccount:{NS}:{SA}")
}

/// Create a Pod in the fake (the server assigns its uid, as a real one does): its uid.
fn add_pod(fake: &FakeApiServer, name: &str, sandbox: Option<&str>) -> String {
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NS.to_owned()),
            annotations: sandbox
                .map(|s| BTreeMap::from([("palisade.dev/sandbox-id".to_owned(), s.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "agent".to_owned(),
                image: Some("agent:test".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    fake.put(&pod).metadata.uid.unwrap()
}

/// The (unverified) claims of a JWT, for looking at them.
fn claims_of(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn issue(gw: &Gw, token: &str) -> palisade_gateway::client::Answer {
    post(&gw.client(Some(token)), "/v1/token:issue").await
}

fn failures(scrape: &str, reason: &str) -> f64 {
    sample(
        scrape,
        &format!(
            "palisade_gateway_auth_failures_total{{authenticator=\"kubernetes\",reason=\"{reason}\"}}"
        ),
    )
}

/// The fake (with the sandbox namespaces), a gateway using it, a sandbox and the uid of
/// its pod `agent-0`.
async fn setup() -> (FakeApiServer, Gw, String, String, tempfile::TempDir) {
    let fake = FakeApiServer::start().await;
    fake.create_namespace(NS, &[]);
    fake.create_namespace("other-allowed", &[]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.write_kubeconfig(dir.path());
    let gw = Gw::start(&[
        "--kube-config",
        kubeconfig.to_str().unwrap(),
        "--sandbox-service-account",
        SA,
        "--sandbox-namespaces",
        "other-allowed,sandboxes",
        "--kube-timeout",
        "2s",
    ])
    .await;
    let (id, _bootstrap) = gw.create_sandbox(None).await;
    let pod_uid = add_pod(&fake, "agent-0", Some(&id));
    (fake, gw, id, pod_uid, dir)
}

#[tokio::test]
async fn service_account_token_gets_a_pod_bound_sandbox_jwt() {
    let (fake, gw, id, pod_uid, _kubeconfig_dir) = setup().await;
    let pod_uid = pod_uid.as_str();
    let token = sa_token("ok");
    fake.review(
        &token,
        status(
            &good_user(),
            &[AUD],
            &[(EXTRA_NAME, &["agent-0"]), (EXTRA_UID, &[pod_uid])],
        ),
    );
    let before = gw.metrics().await;
    let a = issue(&gw, &token).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json().unwrap();
    assert_eq!(v["sandboxId"], id.as_str());
    let jwt = v["token"].as_str().unwrap();

    // The gateway's own verifier accepts it, for the right sandbox.
    let (got, claims) = gw
        .running
        .state
        .tokens
        .verify(jwt, palisade_gateway::fsutil::now())
        .unwrap();
    assert_eq!(got, SandboxId::parse(&id).unwrap());
    assert_eq!(claims.sandbox_id, id);
    // … and it carries the pod binding.
    let payload = jwt.split('.').nth(1).unwrap();
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(payload["pod_uid"], pod_uid);
    assert_eq!(payload["sandbox_id"], id.as_str());

    // It works as a sandbox credential.
    let a = get(&gw.client(Some(jwt)), &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(a.status, 200);

    // Refresh carries the pod binding forward, generation after generation,
    // with a new jti each time.
    let mut current = jwt.to_owned();
    let mut jtis = vec![payload["jti"].as_str().unwrap().to_owned()];
    for _ in 0..2 {
        let a = post(&gw.client(Some(&current)), "/v1/token:refresh").await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        current = a.json().unwrap()["token"].as_str().unwrap().to_owned();
        let claims = claims_of(&current);
        assert_eq!(claims["pod_uid"], pod_uid, "{claims}");
        assert_eq!(claims["sandbox_id"], id.as_str());
        let jti = claims["jti"].as_str().unwrap().to_owned();
        assert!(!jtis.contains(&jti), "jti reused");
        jtis.push(jti);
        let (_, verified) = gw
            .running
            .state
            .tokens
            .verify(&current, palisade_gateway::fsutil::now())
            .unwrap();
        assert_eq!(verified.pod_uid.as_deref(), Some(pod_uid));
    }

    let after = gw.metrics().await;
    assert_eq!(
        sample(&after, "palisade_gateway_tokens_issued_total")
            - sample(&before, "palisade_gateway_tokens_issued_total"),
        1.0
    );
    assert_eq!(fake.reviews_seen(), 1);
    assert!(
        fake.requests(Verb::Get, "pods") >= 1,
        "the gateway read the pod from the API server"
    );
    assert_eq!(
        fake.unauthorized_seen(),
        0,
        "the gateway used its kubeconfig token"
    );

    // The ServiceAccount token is good for token:issue only: elsewhere it is
    // refused without even being reviewed.
    for (method, path) in [
        (Method::GET, format!("/v1/sandboxes/{id}")),
        (Method::GET, "/v1/sandboxes".to_owned()),
        (Method::POST, "/v1/token:refresh".to_owned()),
        (Method::POST, format!("/v1/sandboxes/{id}/workload-tokens")),
    ] {
        let a = gw
            .client(Some(&token))
            .send(method.clone(), &path, None, Bytes::new())
            .await
            .unwrap();
        assert_error(&a, 401, "unauthenticated");
    }
    assert_eq!(
        fake.reviews_seen(),
        1,
        "no TokenReview off the token:issue route"
    );
    // A bootstrap-token sandbox's JWT has no binding, and its refresh none either.
    let (_other, plain) = gw.sandbox_with_token(None).await;
    assert!(claims_of(&plain).get("pod_uid").is_none());
    let a = post(&gw.client(Some(&plain)), "/v1/token:refresh").await;
    assert_eq!(a.status, 200);
    let refreshed = a.json().unwrap()["token"].as_str().unwrap().to_owned();
    assert!(
        claims_of(&refreshed).get("pod_uid").is_none(),
        "{}",
        claims_of(&refreshed)
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn every_refusal_has_its_status_and_counted_reason() {
    let (fake, gw, id, pod_uid, _kubeconfig_dir) = setup().await;
    let pod_uid = pod_uid.as_str();
    let unknown = SandboxId::generate().to_string();
    let plain_uid = add_pod(&fake, "plain", None);
    let orphan_uid = add_pod(&fake, "orphan", Some(&unknown));
    let garbage_uid = add_pod(&fake, "garbage", Some("not-a-sandbox"));
    let ok_extra: &[(&str, &[&str])] = &[(EXTRA_NAME, &["agent-0"]), (EXTRA_UID, &[pod_uid])];

    let mut unauth = status(&good_user(), &[AUD], ok_extra);
    unauth.authenticated = Some(false);
    unauth.user = None;
    unauth.error = Some("token has been invalidated".to_owned());

    let cases: Vec<(&str, TokenReviewStatus, u16, &str, &str)> = vec![
        (
            "unauthenticated",
            unauth,
            401,
            "unauthenticated",
            "review_unauthenticated",
        ),
        (
            "wrong-audience",
            status(&good_user(), &["kubernetes.default.svc"], ok_extra),
            401,
            "unauthenticated",
            "wrong_audience",
        ),
        (
            "wrong-sa",
            status(
                &format!("system:serviceaccount:{NS}:default"),
                &[AUD],
                ok_extra,
            ),
            403,
            "forbidden",
            "wrong_service_account",
        ),
        (
            "wrong-ns",
            status(
                &format!("system:serviceaccount:kube-system:{SA}"),
                &[AUD],
                ok_extra,
            ),
            403,
            "forbidden",
            "namespace_not_allowed",
        ),
        (
            "no-pod-name",
            status(&good_user(), &[AUD], &[(EXTRA_UID, &[pod_uid])]),
            401,
            "unauthenticated",
            "missing_pod_extra",
        ),
        (
            "no-pod-uid",
            status(&good_user(), &[AUD], &[(EXTRA_NAME, &["agent-0"])]),
            401,
            "unauthenticated",
            "missing_pod_extra",
        ),
        (
            "dup-pod-name",
            status(
                &good_user(),
                &[AUD],
                &[
                    (EXTRA_NAME, &["agent-0", "agent-1"]),
                    (EXTRA_UID, &[pod_uid]),
                ],
            ),
            401,
            "unauthenticated",
            "duplicate_pod_extra",
        ),
        (
            "dup-pod-uid",
            status(
                &good_user(),
                &[AUD],
                &[(EXTRA_NAME, &["agent-0"]), (EXTRA_UID, &[pod_uid, "other"])],
            ),
            401,
            "unauthenticated",
            "duplicate_pod_extra",
        ),
        (
            "uid-mismatch",
            status(
                &good_user(),
                &[AUD],
                &[
                    (EXTRA_NAME, &["agent-0"]),
                    (EXTRA_UID, &["an-older-pod-uid"]),
                ],
            ),
            403,
            "forbidden",
            "pod_uid_mismatch",
        ),
        (
            "pod-missing",
            status(
                &good_user(),
                &[AUD],
                &[(EXTRA_NAME, &["gone"]), (EXTRA_UID, &["uid-gone"])],
            ),
            403,
            "forbidden",
            "pod_not_found",
        ),
        (
            "no-annotation",
            status(
                &good_user(),
                &[AUD],
                &[(EXTRA_NAME, &["plain"]), (EXTRA_UID, &[plain_uid.as_str()])],
            ),
            403,
            "forbidden",
            "missing_sandbox_annotation",
        ),
        (
            "bad-annotation",
            status(
                &good_user(),
                &[AUD],
                &[
                    (EXTRA_NAME, &["garbage"]),
                    (EXTRA_UID, &[garbage_uid.as_str()]),
                ],
            ),
            403,
            "forbidden",
            "invalid_sandbox_annotation",
        ),
        (
            "unknown-sandbox",
            status(
                &good_user(),
                &[AUD],
                &[
                    (EXTRA_NAME, &["orphan"]),
                    (EXTRA_UID, &[orphan_uid.as_str()]),
                ],
            ),
            403,
            "forbidden",
            "unknown_sandbox",
        ),
    ];
    let issued_before = sample(&gw.metrics().await, "palisade_gateway_tokens_issued_total");
    for (label, st, code, error, reason) in cases {
        let token = sa_token(label);
        fake.review(&token, st);
        let before = failures(&gw.metrics().await, reason);
        let a = issue(&gw, &token).await;
        let body = assert_error(&a, code, error);
        assert!(
            !body.reason.contains(&token),
            "{label}: the token is echoed: {body:?}"
        );
        let after = failures(&gw.metrics().await, reason);
        assert_eq!(after - before, 1.0, "{label}: reason {reason} not counted");
    }

    // A token the fake does not know is unauthenticated too.
    let a = issue(&gw, &sa_token("never-seen")).await;
    assert_error(&a, 401, "unauthenticated");

    // The API server failing or hanging: fail closed with 503, counted.
    let good = sa_token("good-but-server-down");
    fake.review(&good, status(&good_user(), &[AUD], ok_extra));
    for (mode, reason) in [
        (Mode::Fail500, "apiserver_error"),
        (Mode::Hang, "apiserver_timeout"),
    ] {
        fake.set_mode(mode);
        let before = failures(&gw.metrics().await, reason);
        let a = issue(&gw, &good).await;
        let body = assert_error(&a, 503, "unavailable");
        assert!(body.reason.contains("no token was issued"), "{body:?}");
        let after = failures(&gw.metrics().await, reason);
        assert_eq!(after - before, 1.0, "{mode:?}: {reason} not counted");
    }
    // Nothing was issued by any refusal.
    assert_eq!(
        sample(&gw.metrics().await, "palisade_gateway_tokens_issued_total"),
        issued_before
    );
    // Once the server recovers, the same token works.
    fake.set_mode(Mode::Normal);
    let a = issue(&gw, &good).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json().unwrap()["sandboxId"], id.as_str());
    gw.running.shutdown().await;
}

#[tokio::test]
async fn service_account_tokens_are_refused_when_not_configured() {
    let gw = Gw::start(&[]).await;
    let before = failures(&gw.metrics().await, "not_configured");
    let a = issue(&gw, &sa_token("any")).await;
    let body = assert_error(&a, 401, "unauthenticated");
    assert!(
        body.reason.contains("--sandbox-service-account"),
        "{body:?}"
    );
    assert_eq!(
        failures(&gw.metrics().await, "not_configured") - before,
        1.0
    );
    // Bootstrap tokens still work.
    let (_id, _jwt) = gw.sandbox_with_token(None).await;
    gw.running.shutdown().await;
}

#[tokio::test]
async fn service_account_attempts_are_rate_limited_before_token_review() {
    let (fake, gw, id, pod_uid, _kubeconfig_dir) = setup().await;
    let pod_uid = pod_uid.as_str();
    // Rates so slow that nothing refills during the test: the counts below
    // do not depend on timing.
    let slow = |burst| ReviewRate {
        per_sec: 0.0001,
        burst,
    };
    gw.running
        .state
        .authn
        .kube
        .as_ref()
        .unwrap()
        .limiter()
        .set_rates(slow(3), slow(5));
    let ok_extra: &[(&str, &[&str])] = &[(EXTRA_NAME, &["agent-0"]), (EXTRA_UID, &[pod_uid])];

    // One caller looping on one (unknown) token: 3 reviews, then 429s that
    // never reach the API server.
    let looping = sa_token("looping");
    let before = gw.metrics().await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let a = issue(&gw, &looping).await;
        if a.status == 429 {
            let body = assert_error(&a, 429, "rate_limited");
            assert!(!body.reason.contains(&looping), "{body:?}");
            let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry >= 1, "{retry}");
        }
        statuses.push(a.status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429, 429, 429, 429, 429]);
    assert_eq!(fake.reviews_seen(), 3);
    let after = gw.metrics().await;
    assert_eq!(
        failures(&after, "rate_limited") - failures(&before, "rate_limited"),
        7.0
    );

    // Callers spraying distinct tokens, concurrently: the global bucket (5,
    // 3 spent) lets exactly 2 more through to the API server.
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let c = gw.client(Some(&sa_token(&format!("spray-{i}"))));
        attempts.spawn(async move { post(&c, "/v1/token:issue").await });
    }
    let answers = attempts.join_all().await;
    let limited = answers.iter().filter(|a| a.status == 429).count();
    for a in answers.iter().filter(|a| a.status == 429) {
        assert_error(a, 429, "rate_limited");
        assert!(a.headers.contains_key("retry-after"));
    }
    assert_eq!(limited, 18);
    assert_eq!(
        fake.reviews_seen(),
        5,
        "the API server saw only what the buckets allowed"
    );
    let m = gw.metrics().await;
    assert_eq!(failures(&m, "rate_limited_global"), 18.0);
    // No 5xx anywhere in this.
    assert_eq!(
        sample(
            &m,
            r#"palisade_gateway_requests_total{route="token_issue",status_class="5xx"}"#
        ),
        0.0
    );

    // Even a good token is held back now: no review, no token.
    let good = sa_token("good");
    fake.review(&good, status(&good_user(), &[AUD], ok_extra));
    assert_error(&issue(&gw, &good).await, 429, "rate_limited");
    assert_eq!(fake.reviews_seen(), 5);

    // Bootstrap tokens and sandbox JWTs do not go through this limiter.
    let (other, jwt) = gw.sandbox_with_token(None).await;
    let a = get(&gw.client(Some(&jwt)), &format!("/v1/sandboxes/{other}")).await;
    assert_eq!(a.status, 200);

    // With the default rates back, the good token gets its pod-bound JWT.
    gw.running
        .state
        .authn
        .kube
        .as_ref()
        .unwrap()
        .limiter()
        .set_rates(DEFAULT_REVIEW_RATE_PER_TOKEN, DEFAULT_REVIEW_RATE_GLOBAL);
    let a = issue(&gw, &good).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json().unwrap()["sandboxId"], id.as_str());
    assert_eq!(
        claims_of(a.json().unwrap()["token"].as_str().unwrap())["pod_uid"],
        pod_uid
    );
    gw.running.shutdown().await;
}
