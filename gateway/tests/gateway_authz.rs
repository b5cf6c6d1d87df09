//! Walks the route table over real HTTP with a credential of every kind the
//! gateway can mint today, and checks that exactly the declared principals
//! get past authorization.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use palisade_gateway::principal::Scope;
use palisade_gateway::routes::{Grant, ROUTES};
use support::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Nobody,
    Admin,
    OwnSandbox,
    ForeignSandbox,
    Bootstrap,
    Garbage,
}

fn allowed(grants: &[Grant], who: Who, path_has_id: bool) -> bool {
    grants.iter().any(|g| match (g, who) {
        (Grant::Public, _) => who != Who::Garbage,
        (Grant::Scope(_), Who::Admin) => true,
        (Grant::OwnSandbox, Who::OwnSandbox) => path_has_id,
        (Grant::SandboxSelf, Who::OwnSandbox | Who::ForeignSandbox) => true,
        (Grant::Bootstrap, Who::Bootstrap) => true,
        _ => false,
    })
}

/// Codes the auth layers answer with; a handler never uses `forbidden` or
/// `unauthenticated` for an allowed principal.
fn refused_by_auth(a: &palisade_gateway::client::Answer) -> bool {
    if !matches!(a.status.as_u16(), 401 | 403 | 404) {
        return false;
    }
    let body: palisade_api::ErrorBody = serde_json::from_slice(&a.body).unwrap();
    match a.status.as_u16() {
        401 | 403 => true,
        // 404 "sandbox not found" is how a foreign sandbox is refused.
        _ => body.reason == "sandbox not found",
    }
}

/// Send one request; read the body only of a non-2xx answer (the session
/// stream's 200 body never ends).
async fn send_head_first(
    gw: &Gw,
    method: http::Method,
    path: &str,
    token: Option<&str>,
) -> palisade_gateway::client::Answer {
    use http_body_util::{BodyExt, Full};
    let tcp = tokio::net::TcpStream::connect(gw.running.api_addr)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway")
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from_static(b"{}"))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = if parts.status.is_success() {
        Bytes::new()
    } else {
        body.collect().await.unwrap().to_bytes()
    };
    driver.abort();
    palisade_gateway::client::Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

#[tokio::test]
async fn route_table_times_every_principal() {
    // Many admin calls in a burst: lift the per-principal rate limit.
    let gw = Gw::start(&["--rate-limit-burst", "100000"]).await;
    let (own_id, own_token) = gw.sandbox_with_token(None).await;
    let (_other_id, other_token) = gw.sandbox_with_token(None).await;
    for route in ROUTES {
        for who in [
            Who::Nobody,
            Who::Admin,
            Who::OwnSandbox,
            Who::ForeignSandbox,
            Who::Bootstrap,
            Who::Garbage,
        ] {
            // A fresh target sandbox owned by `own` for every request (delete
            // and token:issue consume things).
            let (target, bootstrap) = gw.create_sandbox(None).await;
            let path_has_id = route.path.contains("{id}");
            let id_in_path = if who == Who::OwnSandbox && path_has_id {
                own_id.clone()
            } else {
                target.clone()
            };
            let path = route
                .path
                .replace("{id}", &id_in_path)
                .replace("{name}", "web")
                .replace("{relay_id}", "0123456789abcdef0123456789abcdef");
            let token: Option<String> = match who {
                Who::Nobody => None,
                Who::Admin => Some(ADMIN_TOKEN.into()),
                Who::OwnSandbox => Some(own_token.clone()),
                Who::ForeignSandbox => Some(other_token.clone()),
                Who::Bootstrap => Some(bootstrap),
                Who::Garbage => Some("garbage".into()),
            };
            let a = send_head_first(&gw, route.method.clone(), &path, token.as_deref()).await;
            assert!(
                a.status.as_u16() < 500,
                "{:?} {who:?}: {}",
                route.id,
                a.status
            );
            let want = allowed(route.grants, who, path_has_id);
            assert_eq!(
                !refused_by_auth(&a),
                want,
                "{:?} as {who:?} answered {} {}",
                route.id,
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
    }
    // The own sandbox must not have been deleted by the walk.
    assert_eq!(
        get(
            &gw.client(Some(&own_token)),
            &format!("/v1/sandboxes/{own_id}")
        )
        .await
        .status,
        200
    );
    // Operators' scopes are all present in the table.
    for scope in Scope::ALL {
        assert!(
            ROUTES
                .iter()
                .any(|r| r.grants.contains(&Grant::Scope(scope))),
            "{scope:?} unused"
        );
    }
    gw.running.shutdown().await;
}

#[tokio::test]
async fn insecure_anonymous_mode_grants_sandbox_and_policy_scopes_but_never_admin() {
    let gw = Gw::start(&["--insecure-allow-anonymous"]).await;
    let anon = gw.client(None);
    let a = post_json(&anon, "/v1/sandboxes", &serde_json::json!({"name": "x"})).await;
    assert_eq!(a.status, 201);
    assert_eq!(a.json().unwrap()["sandbox"]["owner"], "anonymous");
    assert_error(
        &post(&anon, "/v1/keys:rotate").await,
        401,
        "unauthenticated",
    );
    assert_error(&get(&anon, "/v1/keys").await, 401, "unauthenticated");
    // The admin token still works alongside.
    assert_eq!(get(&gw.admin(), "/v1/keys").await.status, 200);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn per_principal_rate_limit_answers_429_and_spares_others() {
    let gw = Gw::start(&["--rate-limit-per-sec", "0.001", "--rate-limit-burst", "3"]).await;
    let (id, token) = gw.sandbox_with_token(None).await; // admin: 1 request
    let admin = gw.admin();
    assert_eq!(get(&admin, "/v1/sandboxes").await.status, 200);
    assert_eq!(get(&admin, "/v1/sandboxes").await.status, 200);
    let limited = get(&admin, "/v1/sandboxes").await;
    assert_error(&limited, 429, "rate_limited");
    assert!(limited.headers.get("retry-after").is_some());
    // Another principal has its own bucket.
    let own = get(&gw.client(Some(&token)), &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(own.status, 200);
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"palisade_gateway_rate_limited_total{principal_kind="user"}"#
        ),
        1.0
    );
    gw.running.shutdown().await;
}
