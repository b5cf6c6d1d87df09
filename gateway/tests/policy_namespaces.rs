//! Policies belong to a namespace (`PUT /v1/policies/{name}?namespace=NS`) or
//! are cluster-wide (no namespace, admin only). Platform principals read and
//! write only their namespaces' policies (and read cluster-wide ones); a
//! sandbox runs only a policy of its own namespace or a cluster-wide one.
//! Real gateway, real OIDC platform tokens, real sandbox JWTs.
#![allow(clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::Duration;

use palisade_api::session::SessionEvent;
use support::*;

fn doc(name: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  \
         egress:\n    - name: web\n      hosts: [example.com]\n      ports: [443]\n"
    )
}

async fn write(
    c: &palisade_gateway::client::GatewayClient,
    name: &str,
    ns: Option<&str>,
) -> palisade_gateway::client::Answer {
    let path = match ns {
        Some(ns) => format!("/v1/policies/{name}?namespace={ns}"),
        None => format!("/v1/policies/{name}"),
    };
    put(c, &path, &doc(name)).await
}

#[tokio::test]
async fn platform_principals_read_and_write_only_their_namespaces_policies() {
    let idp = Idp::new();
    let gw = idp.gateway("platform", &[]).await;
    let admin = gw.admin();
    for (name, ns) in [("base", None), ("pa", Some("ns-a")), ("pb", Some("ns-b"))] {
        let a = write(&admin, name, ns).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json().unwrap()["namespace"].as_str(), ns);
    }
    let ctl = gw.client(Some(&idp.platform("ctl", &["ns-a"])));

    // Reading: its own namespace and cluster-wide ones; another namespace's
    // policy answers exactly like a missing one.
    assert_eq!(get(&ctl, "/v1/policies/base").await.status, 200);
    let pa = get(&ctl, "/v1/policies/pa").await;
    assert_eq!(pa.status, 200);
    assert_eq!(pa.json().unwrap()["namespace"], "ns-a");
    let foreign = get(&ctl, "/v1/policies/pb").await;
    assert_error(&foreign, 404, "not_found");
    assert_eq!(foreign.body, get(&ctl, "/v1/policies/nope").await.body);

    // Writing: only into its namespaces, never cluster-wide, never another's.
    assert_eq!(write(&ctl, "pa", Some("ns-a")).await.status, 200);
    assert_eq!(write(&ctl, "fresh", Some("ns-a")).await.status, 200);
    assert_error(&write(&ctl, "fresh2", None).await, 403, "forbidden");
    assert_error(&write(&ctl, "fresh3", Some("ns-b")).await, 403, "forbidden");
    assert_error(&write(&ctl, "pb", Some("ns-b")).await, 403, "forbidden");
    assert_error(&write(&ctl, "pb", Some("ns-a")).await, 403, "forbidden");
    assert_error(&write(&ctl, "base", Some("ns-a")).await, 403, "forbidden");
    assert_error(&write(&ctl, "base", None).await, 403, "forbidden");
    assert_eq!(
        get(&admin, "/v1/policies/pb").await.json().unwrap()["revision"],
        3,
        "ns-b's policy untouched"
    );
    // A policy's namespace is fixed once created, for the admin too.
    let moved = write(&admin, "pa", None).await;
    assert_error(&moved, 409, "policy_namespace_conflict");
    assert_error(
        &write(&admin, "base", Some("ns-a")).await,
        409,
        "policy_namespace_conflict",
    );
    assert_error(
        &gw.admin()
            .send(
                http::Method::PUT,
                "/v1/policies/pa?namespace=NS_A",
                Some("application/yaml"),
                bytes::Bytes::from(doc("pa")),
            )
            .await
            .unwrap(),
        400,
        "invalid_query",
    );

    // Sandboxes run only their namespace's policies or cluster-wide ones.
    let create = |ns: Option<&'static str>, policy: &'static str| {
        let mut spec = serde_json::json!({"name": "s", "policy": policy});
        if let Some(ns) = ns {
            spec["namespace"] = ns.into();
        }
        spec
    };
    for policy in ["pa", "base"] {
        let a = post_json(&ctl, "/v1/sandboxes", &create(Some("ns-a"), policy)).await;
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    }
    assert_error(
        &post_json(&ctl, "/v1/sandboxes", &create(Some("ns-a"), "pb")).await,
        422,
        "policy_not_usable",
    );
    assert_error(
        &post_json(&admin, "/v1/sandboxes", &create(None, "pa")).await,
        422,
        "policy_not_usable",
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn a_sandbox_is_never_served_another_namespaces_policy() {
    let idp = Idp::new();
    let gw = idp.gateway("platform", &[]).await;
    // ns-b's sandbox names a policy that does not exist yet...
    let (id, token) = gw.sandbox_with_token_in(Some("ns-b"), Some("later")).await;
    // ...and ns-a's controller creates a policy of that name in ns-a.
    let ctl = gw.client(Some(&idp.platform("ctl", &["ns-a"])));
    assert_eq!(write(&ctl, "later", Some("ns-a")).await.status, 200);

    let sb = gw.client(Some(&token));
    let a = get(&sb, &format!("/v1/sandboxes/{id}/policy")).await;
    let body = assert_error(&a, 404, "not_found");
    assert!(body.reason.contains("not served"), "{body:?}");
    // The session stream delivers no policy either: after `hello`, nothing
    // but heartbeats (the policy would follow `hello` at once).
    let mut s = Session::start(&gw, &id, &token).await;
    assert!(matches!(s.next().await, SessionEvent::Hello { .. }));
    let next = tokio::time::timeout(Duration::from_secs(3), s.next()).await;
    assert!(next.is_err(), "delivered: {next:?}");

    // The same name as a cluster-wide policy would have been served.
    let (id2, token2) = gw.sandbox_with_token_in(Some("ns-b"), Some("shared")).await;
    assert_eq!(write(&gw.admin(), "shared", None).await.status, 200);
    let a = get(
        &gw.client(Some(&token2)),
        &format!("/v1/sandboxes/{id2}/policy"),
    )
    .await;
    assert_eq!(a.status, 200);
    gw.running.shutdown().await;
}
