//! Who may reference a gateway secret, and where it may be sent: a secret's
//! allowance (`allowedNamespaces`, `allowedPolicies`, `allowedHosts`) is
//! intersected with a policy's credential bindings when the policy is written
//! (422 naming the secret and what is not allowed) and again on every
//! delivery to a sidecar. `file`/`env` credential sources are refused in
//! policies stored on the gateway, and no route ever answers a secret value.
//! Real gateway on 127.0.0.1:0, real OIDC editor and platform tokens
//! (Ed25519, verified from a PEM file), real sandbox JWTs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // helpers outside #[test] fns; a panic is the failure report

mod support;

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use palisade_api::session::SessionEvent;
use palisade_gateway::routes::{ROUTES, RouteId};
use support::*;

const VALUE: &str = "ghp_scoping-secret-value-77aa1f";
const VALUE_2: &str = "ghp_second-scoping-value-3c9d0e";

/// A policy `name` injecting secret `secret` into requests to `host`:443.
fn policy(name: &str, secret: &str, host: &str) -> String {
    format!(
        r#"apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata:
  name: {name}
spec:
  credentials:
    gh:
      from: {{secret: {{name: {secret}, key: token}}}}
      inject: {{header: Authorization, scheme: Bearer}}
  egress:
    - name: api
      hosts: ["{host}"]
      ports: [443]
      credential: gh
"#
    )
}

fn path(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/v1/policies/{name}?namespace={ns}"),
        None => format!("/v1/policies/{name}"),
    }
}

fn text(a: &palisade_gateway::client::Answer) -> String {
    String::from_utf8_lossy(&a.body).into_owned()
}

/// The 422 `secret_not_allowed` answer: its reason, checked to never hold a value.
fn not_allowed(a: &palisade_gateway::client::Answer) -> String {
    let body = assert_error(a, 422, "secret_not_allowed");
    let full: palisade_api::InvalidPolicyBody = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(full.errors[0].path, "spec.credentials.gh.from.secret");
    assert!(!text(a).contains(VALUE), "a value in a refusal");
    body.reason
}

#[tokio::test]
async fn an_editor_cannot_reference_a_secret_that_does_not_allow_the_policy() {
    let idp = Idp::new();
    let gw = idp.gateway("user", &[]).await;
    let editor = gw.client(Some(&idp.user("eve", &["editor"])));
    // Only the cluster-wide policy `ci` may use it, and only on api.github.com:443.
    let a = put_secret_allowing(&gw, "github", VALUE, &[], &["ci"], &["api.github.com:443"]).await;
    assert_eq!(a.status, 200, "{}", text(&a));

    // The escalation: bind the secret to a host the writer controls.
    let a = put(
        &editor,
        &path("steal", Some("team")),
        &policy("steal", "github", "evil.example.com"),
    )
    .await;
    let reason = not_allowed(&a);
    assert!(reason.contains("`github`"), "{reason}");
    assert!(
        reason.contains("team") && reason.contains("evil.example.com"),
        "{reason}"
    );
    // Its own namespace and the allowed host: still not an allowed policy.
    let a = put(
        &editor,
        &path("steal", Some("team")),
        &policy("steal", "github", "api.github.com"),
    )
    .await;
    let reason = not_allowed(&a);
    assert!(
        reason.contains("team/steal") || reason.contains("namespace `team`"),
        "{reason}"
    );
    assert!(
        !reason.contains("may not be sent"),
        "the host is allowed: {reason}"
    );
    // A namespaced policy named `ci` is not the cluster-wide `ci`.
    let a = put(
        &editor,
        &path("ci", Some("team")),
        &policy("ci", "github", "api.github.com"),
    )
    .await;
    not_allowed(&a);
    // The cluster-wide `ci` is the admin's to write, not the editor's.
    let a = put(
        &editor,
        &path("ci", None),
        &policy("ci", "github", "api.github.com"),
    )
    .await;
    assert_error(&a, 403, "forbidden");
    // A secret that does not exist cannot be referenced either.
    let a = put(
        &editor,
        &path("ghost", Some("team")),
        &policy("ghost", "nope", "api.github.com"),
    )
    .await;
    assert!(not_allowed(&a).contains("does not exist"));
    // What the admin allowed works, for the admin.
    let a = put(
        &gw.admin(),
        &path("ci", None),
        &policy("ci", "github", "api.github.com"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", text(&a));
    // ...and never wider than allowed, even for the admin.
    let a = put(
        &gw.admin(),
        &path("ci", None),
        &policy("ci", "github", "*.github.com"),
    )
    .await;
    assert!(not_allowed(&a).contains("*.github.com"));
    gw.running.shutdown().await;
}

#[tokio::test]
async fn a_secret_written_without_an_allowance_is_usable_by_no_policy() {
    let idp = Idp::new();
    let gw = idp.gateway("user", &[]).await;
    // The body every client sent before allowances existed.
    let a = gw
        .admin()
        .send(
            Method::PUT,
            "/v1/secrets/github",
            Some("application/json"),
            Bytes::from(serde_json::json!({"data": {"token": VALUE}}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", text(&a));
    let info = a.json().unwrap();
    // An editor binding it to a host of its choosing (the escalation)...
    let editor = gw.client(Some(&idp.user("eve", &["editor"])));
    let a = put(
        &editor,
        &path("steal", Some("team")),
        &policy("steal", "github", "evil.example.com"),
    )
    .await;
    not_allowed(&a);
    // ...and even the admin, until the admin gives the secret an allowance.
    let a = put(
        &gw.admin(),
        &path("web", None),
        &policy("web", "github", "api.github.com"),
    )
    .await;
    assert!(not_allowed(&a).contains("cluster-wide policy `web`"));
    assert_eq!(info["allowedHosts"], serde_json::json!([]), "{info}");
    gw.running.shutdown().await;
}

#[tokio::test]
async fn a_platform_controller_uses_a_secret_only_in_allowed_namespaces_and_hosts() {
    let idp = Idp::new();
    let gw = idp.gateway("platform", &[]).await;
    let a_ctl = gw.client(Some(&idp.platform("ctl-a", &["ns-a"])));
    let b_ctl = gw.client(Some(&idp.platform("ctl-b", &["ns-b"])));
    let a = put_secret_allowing(&gw, "github", VALUE, &["ns-a"], &[], &["*.github.com:443"]).await;
    assert_eq!(a.status, 200, "{}", text(&a));

    let ok = put(
        &a_ctl,
        &path("web", Some("ns-a")),
        &policy("web", "github", "api.github.com"),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", text(&ok));
    assert_eq!(ok.json().unwrap()["namespace"], "ns-a");
    let reason = not_allowed(
        &put(
            &a_ctl,
            &path("web", Some("ns-a")),
            &policy("web", "github", "attacker.example.net"),
        )
        .await,
    );
    assert!(
        reason.contains("attacker.example.net") && reason.contains("443"),
        "{reason}"
    );
    // Another namespace's controller: not allowed, with the namespace named.
    let reason = not_allowed(
        &put(
            &b_ctl,
            &path("steal", Some("ns-b")),
            &policy("steal", "github", "api.github.com"),
        )
        .await,
    );
    assert!(
        reason.contains("ns-b") && reason.contains("`github`"),
        "{reason}"
    );
    // Nor can it run ns-a's policy in one of its sandboxes.
    let a = post_json(
        &b_ctl,
        "/v1/sandboxes",
        &serde_json::json!({"name": "x", "namespace": "ns-b", "policy": "web"}),
    )
    .await;
    assert_error(&a, 422, "policy_not_usable");
    gw.running.shutdown().await;
}

#[tokio::test]
async fn file_and_env_sources_are_refused_in_gateway_policies() {
    let gw = Gw::start(&[]).await;
    for (source, path_suffix) in [
        (
            "{file: /var/run/secrets/kubernetes.io/serviceaccount/token}",
            "file",
        ),
        ("{env: PALISADE_ADMIN_TOKEN}", "env"),
    ] {
        let doc = format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: local\nspec:\n  \
             credentials:\n    gh:\n      from: {source}\n  egress:\n    - name: api\n      \
             hosts: [api.github.com]\n      ports: [443]\n      credential: gh\n"
        );
        // Valid for a sidecar's local --policy file...
        assert!(palisade_policy::parse_policy(doc.as_bytes()).is_ok());
        // ...refused on the gateway, for the admin too.
        let a = put(&gw.admin(), "/v1/policies/local", &doc).await;
        assert_error(&a, 422, "invalid_policy");
        let body: palisade_api::InvalidPolicyBody = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            body.errors[0].path,
            format!("spec.credentials.gh.from.{path_suffix}")
        );
        assert!(body.errors[0].message.contains("--policy"), "{body:?}");
        assert_error(
            &get(&gw.admin(), "/v1/policies/local").await,
            404,
            "not_found",
        );
    }
    gw.running.shutdown().await;
}

async fn credentials(s: &mut Session) -> Vec<palisade_api::session::DeliveredCredential> {
    match s.next().await {
        SessionEvent::Credentials { credentials, .. } => credentials,
        other => panic!("expected credentials, got {other:?}"),
    }
}

#[tokio::test]
async fn a_narrowed_allowance_withholds_the_credential_from_sidecars_already_running() {
    let logs = capture_logs(tracing::Level::INFO);

    let gw = Gw::start(&[]).await;
    async fn allow(gw: &Gw, namespaces: &[&str], hosts: &[&str]) {
        let a = put_secret_allowing(gw, "github", VALUE, namespaces, &[], hosts).await;
        assert_eq!(a.status, 200, "{}", text(&a));
    }
    allow(&gw, &["ns-a"], &["api.github.com:443"]).await;
    let a = put(
        &gw.admin(),
        &path("web", Some("ns-a")),
        &policy("web", "github", "api.github.com"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", text(&a));
    let (id, token) = gw.sandbox_with_token_in(Some("ns-a"), Some("web")).await;
    let mut s = Session::start(&gw, &id, &token).await;
    assert!(matches!(s.next().await, SessionEvent::Hello { .. }));
    assert!(matches!(s.next().await, SessionEvent::Policy { .. }));
    let delivered = credentials(&mut s).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].value, VALUE);

    // The admin takes the namespace away: the running sidecar loses the credential.
    allow(&gw, &[], &["api.github.com:443"]).await;
    assert!(credentials(&mut s).await.is_empty(), "withheld");
    // Allowed again, then the host narrowed to another port: withheld again.
    allow(&gw, &["ns-a"], &["api.github.com:443"]).await;
    assert_eq!(credentials(&mut s).await[0].value, VALUE);
    allow(&gw, &["ns-a"], &["api.github.com:8443"]).await;
    assert!(credentials(&mut s).await.is_empty(), "withheld by host");

    drop(s);
    gw.running.shutdown().await;
    let logs = logs.text();
    let fingerprint = palisade_gateway::store::fingerprint(VALUE);
    let withheld: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("credential withheld"))
        .collect();
    assert_eq!(withheld.len(), 2, "{logs}");
    assert!(
        withheld
            .iter()
            .all(|l| l.contains("github") && l.contains(&fingerprint)),
        "{withheld:?}"
    );
    assert!(withheld[1].contains("api.github.com") && withheld[1].contains("443"));
    let audited = logs
        .lines()
        .filter(|l| l.contains("palisade_audit") && l.contains("credential_withheld"))
        .count();
    assert_eq!(audited, 2, "{logs}");
    assert!(!logs.contains(VALUE), "a secret value in the logs");
}

/// Every way a value could be spelled in an answer.
fn spellings(value: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![
        value.to_owned(),
        STANDARD.encode(value),
        URL_SAFE_NO_PAD.encode(value),
        hex::encode(value),
    ]
}

/// One request, its whole answer (head and body) as text.
async fn answer_text(
    gw: &Gw,
    method: Method,
    path: &str,
    token: &str,
    body: Bytes,
) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(gw.running.api_addr)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(std::time::Duration::from_secs(30), body.collect())
        .await
        .expect("an answer that does not end")
        .unwrap()
        .to_bytes();
    driver.abort();
    let mut out = format!("{:?}\n", parts.headers);
    out.push_str(&String::from_utf8_lossy(&body));
    (parts.status.as_u16(), out)
}

#[tokio::test]
async fn no_route_answers_a_secret_value_not_even_to_the_admin() {
    let gw = Gw::start(&["--rate-limit-burst", "100000"]).await;
    let hosts = ["api.github.com:443"];
    assert_eq!(
        put_secret_allowing(&gw, "github", VALUE, &[], &["web"], &hosts)
            .await
            .status,
        200
    );
    assert_eq!(
        put(
            &gw.admin(),
            "/v1/policies/web",
            &policy("web", "github", "api.github.com")
        )
        .await
        .status,
        200
    );
    // A live sidecar session holds the value (the one place it may go).
    let (own, own_token) = gw.sandbox_with_token(Some("web")).await;
    let mut s = Session::start(&gw, &own, &own_token).await;
    for _ in 0..3 {
        s.next().await;
    }
    let forbidden: Vec<String> = [VALUE, VALUE_2].iter().flat_map(|v| spellings(v)).collect();
    let mut walked = 0;
    for route in ROUTES {
        // Who: the admin on every route; the sandbox itself on every route
        // but its own session stream (which delivers the value, by design).
        let mut callers = vec![ADMIN_TOKEN.to_owned()];
        if route.id != RouteId::SandboxSession {
            callers.push(own_token.clone());
        }
        for token in callers {
            let target = if token == ADMIN_TOKEN {
                gw.create_sandbox(Some("web")).await.0
            } else {
                own.clone()
            };
            let name = if route.path.starts_with("/v1/secrets") {
                "github"
            } else {
                "web"
            };
            let body = match route.id {
                RouteId::SecretPut => Bytes::from(
                    serde_json::json!({
                        "data": {"token": VALUE_2},
                        "allowedPolicies": ["web"],
                        "allowedHosts": hosts,
                    })
                    .to_string(),
                ),
                RouteId::PolicyPut => Bytes::from(policy("web", "github", "api.github.com")),
                RouteId::SandboxCreate => {
                    Bytes::from(r#"{"name": "walk", "policy": "web"}"#.to_owned())
                }
                RouteId::WorkloadTokens => Bytes::from(r#"{"audience": "x"}"#.to_owned()),
                _ => Bytes::from_static(b"{}"),
            };
            let p = route
                .path
                .replace("{id}", &target)
                .replace("{name}", name)
                .replace("{relay_id}", "0123456789abcdef0123456789abcdef");
            let (status, answer) = answer_text(&gw, route.method.clone(), &p, &token, body).await;
            assert!(status < 500, "{:?}: {status} {answer}", route.id);
            for spelled in &forbidden {
                assert!(
                    !answer.contains(spelled.as_str()),
                    "{:?} {} answered a secret value: {answer}",
                    route.id,
                    route.path
                );
            }
            walked += 1;
        }
    }
    assert_eq!(walked, 2 * ROUTES.len() - 1);
    // The walk did reach the secret routes successfully: the value was
    // replaced (and the sidecar, only it, was sent the new one).
    loop {
        if let SessionEvent::Credentials { credentials, .. } = s.next().await
            && credentials.first().is_some_and(|c| c.value == VALUE_2)
        {
            break;
        }
    }
    gw.running.shutdown().await;
}
