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
        // 404 "sandbox not found" is how a foreign sandbox is refused, and
        // "policy not found" another namespace's policy.
        _ => body.reason == "sandbox not found" || body.reason == "policy not found",
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
    send_body_head_first(gw, method, path, token, Bytes::from_static(b"{}")).await
}

async fn send_body_head_first(
    gw: &Gw,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Bytes,
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
        .send_request(req.body(Full::new(body)).unwrap())
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
    // The `{name}` policy exists (a missing one answers like a foreign one).
    assert_eq!(
        put(&gw.admin(), "/v1/policies/web", &policy_doc("web"))
            .await
            .status,
        200
    );
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

/// The namespaced operator principals a gateway can have besides the admin.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Operator {
    /// A platform controller for `ns-a` only.
    PlatformNsA,
    /// A user with the `editor` role (every namespace, nothing cluster-wide to write).
    Editor,
}

/// Independent statement of what `who` may do on `route` to an object of
/// namespace `ns` (`None`: no namespace, or a cluster-wide policy).
fn allowed_in_namespace(
    route: &palisade_gateway::routes::Route,
    who: Operator,
    ns: Option<&str>,
) -> bool {
    use palisade_gateway::routes::RouteId;
    // Both hold every operator scope but `admin`.
    let granted = route.grants.iter().any(|g| match g {
        Grant::Public => true,
        Grant::Scope(s) => *s != Scope::Admin,
        _ => false,
    });
    if !granted {
        return false;
    }
    let sees = match who {
        Operator::PlatformNsA => ns == Some("ns-a"),
        Operator::Editor => true,
    };
    match route.id {
        RouteId::PolicyGet => ns.is_none() || sees,
        RouteId::PolicyPut => ns.is_some() && sees,
        RouteId::SandboxCreate => sees,
        _ if route.path.contains("{id}") => sees,
        _ => true,
    }
}

fn policy_doc(name: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  \
         egress:\n    - name: web\n      hosts: [example.com]\n      ports: [443]\n"
    )
}

/// Every route × (platform for ns-a | editor) × object namespace (ns-a, ns-b,
/// none/cluster-wide), over real HTTP with real OIDC tokens.
#[tokio::test]
async fn route_table_times_operator_principals_times_namespaces() {
    for (kind, who) in [
        ("platform", Operator::PlatformNsA),
        ("user", Operator::Editor),
    ] {
        let idp = Idp::new();
        let gw = idp.gateway(kind, &["--rate-limit-burst", "100000"]).await;
        let token = match who {
            Operator::PlatformNsA => idp.platform("ctl", &["ns-a"]),
            Operator::Editor => idp.user("ed", &["editor"]),
        };
        let namespaces = [Some("ns-a"), Some("ns-b"), None];
        let policy_name = |ns: Option<&str>| format!("p-{}", ns.unwrap_or("cluster"));
        for ns in namespaces {
            let name = policy_name(ns);
            let path = match ns {
                Some(ns) => format!("/v1/policies/{name}?namespace={ns}"),
                None => format!("/v1/policies/{name}"),
            };
            assert_eq!(
                put(&gw.admin(), &path, &policy_doc(&name)).await.status,
                200
            );
        }
        for route in ROUTES {
            for ns in namespaces {
                let (target, _) = gw.create_sandbox_in(ns, None).await;
                let name = if route.path.starts_with("/v1/secrets") {
                    "web".to_owned()
                } else {
                    policy_name(ns)
                };
                let mut path = route
                    .path
                    .replace("{id}", &target)
                    .replace("{name}", &name)
                    .replace("{relay_id}", "0123456789abcdef0123456789abcdef");
                let body = match route.id {
                    palisade_gateway::routes::RouteId::PolicyPut => {
                        if let Some(ns) = ns {
                            path.push_str(&format!("?namespace={ns}"));
                        }
                        Bytes::from(policy_doc(&name))
                    }
                    palisade_gateway::routes::RouteId::SandboxCreate => {
                        let mut spec = serde_json::json!({"name": "walk"});
                        if let Some(ns) = ns {
                            spec["namespace"] = ns.into();
                        }
                        Bytes::from(spec.to_string())
                    }
                    _ => Bytes::from_static(b"{}"),
                };
                let a = send_body_head_first(&gw, route.method.clone(), &path, Some(&token), body)
                    .await;
                assert!(
                    a.status.as_u16() < 500,
                    "{:?} {who:?} {ns:?}: {}",
                    route.id,
                    a.status
                );
                let want = allowed_in_namespace(route, who, ns);
                assert_eq!(
                    !refused_by_auth(&a),
                    want,
                    "{:?} as {who:?} on namespace {ns:?} answered {} {}",
                    route.id,
                    a.status,
                    String::from_utf8_lossy(&a.body)
                );
            }
        }
        // Listing filters by the same rule.
        let list = get(&gw.client(Some(&token)), "/v1/sandboxes").await;
        let sandboxes = list.json().unwrap()["sandboxes"]
            .as_array()
            .unwrap()
            .clone();
        let seen: std::collections::BTreeSet<Option<String>> = sandboxes
            .iter()
            .map(|s| s["namespace"].as_str().map(str::to_owned))
            .collect();
        let want: std::collections::BTreeSet<Option<String>> = match who {
            Operator::PlatformNsA => [Some("ns-a".to_owned())].into(),
            Operator::Editor => [Some("ns-a".to_owned()), Some("ns-b".to_owned()), None].into(),
        };
        assert_eq!(seen, want, "{who:?}");
        gw.running.shutdown().await;
    }
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
