//! The Kubernetes store as replicas see it: several [`KubeStore`]s (one per
//! "replica") on one strict fake API server, driven only through kube-rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{FakeCluster, POLICY, STORE_NS, policy_with_port};
use kube::Api;
use palisade_api::{Sandbox, SandboxSpec};
use palisade_gateway::crd;
use palisade_gateway::keys::KeySet;
use palisade_gateway::principal::SandboxId;
use palisade_gateway::store::kube_store::{ACCEPTED_ANNOTATION, STALE_BOUND};
use palisade_gateway::store::{BootstrapRecord, Precondition, SecretAllowance, Store};

fn sandbox(namespace: Option<&str>) -> Sandbox {
    Sandbox {
        id: SandboxId::generate(),
        spec: SandboxSpec {
            name: "demo".into(),
            namespace: namespace.map(str::to_owned),
            policy: Some("web".into()),
            command: vec!["sleep".into(), "60".into()],
            ..SandboxSpec::default()
        },
        owner: "user:test".into(),
        created_at: 1_000,
    }
}

/// Run a blocking store call off the async threads, as the handlers do.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sandbox_made_on_one_replica_is_served_and_revoked_on_the_others() {
    let cluster = FakeCluster::start().await;
    let a = cluster.store().await;
    let b = cluster.store().await;
    let sbx = sandbox(Some("team-a"));
    let boot = BootstrapRecord {
        sandbox_id: sbx.id.clone(),
        expires_at: u64::MAX,
    };
    let (sa, s) = (a.clone(), sbx.clone());
    blocking(move || sa.create_sandbox(&s, &"ab".repeat(32), &boot))
        .await
        .unwrap();
    // Not yet in B's cache, or already: either way B answers it.
    let (sb, id) = (b.clone(), sbx.id.clone());
    let seen = blocking(move || sb.get_sandbox(&id)).await.unwrap();
    assert_eq!(seen.as_ref(), Some(&sbx));
    // Stored as a Sandbox object in its namespace, named by its id.
    let objects: Api<crd::Sandbox> = Api::namespaced(cluster.client().await, "team-a");
    let object = objects.get(sbx.id.as_str()).await.unwrap();
    assert_eq!(object.spec.display_name, "demo");
    assert_eq!(object.spec.policy_ref.as_deref(), Some("web"));
    eventually("B lists it", Duration::from_secs(2), || {
        b.list_sandboxes().unwrap().iter().any(|s| s.id == sbx.id)
    })
    .await;
    assert_eq!(b.sandbox_exists_cached(&sbx.id), Some(true));

    let (sa, id) = (a.clone(), sbx.id.clone());
    assert!(blocking(move || sa.delete_sandbox(&id)).await.unwrap());
    eventually("B stops vouching for it", Duration::from_secs(2), || {
        b.sandbox_exists_cached(&sbx.id) != Some(true)
    })
    .await;
    let (sb, id) = (b.clone(), sbx.id.clone());
    assert_eq!(blocking(move || sb.get_sandbox(&id)).await.unwrap(), None);
    // Its bootstrap token went with it.
    let (sb, now) = (b.clone(), 2_000);
    assert!(matches!(
        blocking(move || sb.lookup_bootstrap(&"ab".repeat(32), now))
            .await
            .unwrap(),
        palisade_gateway::store::BootstrapLookup::Unknown
    ));
    let (sa, id) = (a.clone(), sbx.id.clone());
    assert!(!blocking(move || sa.delete_sandbox(&id)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bootstrap_token_is_consumed_exactly_once_across_replicas() {
    let cluster = FakeCluster::start().await;
    let replicas = [
        cluster.store().await,
        cluster.store().await,
        cluster.store().await,
    ];
    for round in 0..5 {
        let sbx = sandbox(None);
        let hash = format!("{round:02x}").repeat(32);
        let boot = BootstrapRecord {
            sandbox_id: sbx.id.clone(),
            expires_at: u64::MAX,
        };
        let (s0, h) = (replicas[0].clone(), hash.clone());
        blocking(move || s0.create_sandbox(&sbx, &h, &boot))
            .await
            .unwrap();
        let mut tries = Vec::new();
        for i in 0..12 {
            let (store, h) = (replicas[i % 3].clone(), hash.clone());
            tries.push(tokio::task::spawn_blocking(move || {
                store.consume_bootstrap(&h, 2_000).unwrap()
            }));
        }
        let mut won = 0;
        for t in tries {
            won += usize::from(t.await.unwrap().is_some());
        }
        assert_eq!(won, 1, "round {round}: exactly one consumer may win");
    }
    // An expired token is refused and the leader's sweep removes it.
    let sbx = sandbox(None);
    let boot = BootstrapRecord {
        sandbox_id: sbx.id.clone(),
        expires_at: 1_500,
    };
    let s0 = replicas[0].clone();
    let hash = "ee".repeat(32);
    let h = hash.clone();
    blocking(move || s0.create_sandbox(&sbx, &h, &boot))
        .await
        .unwrap();
    let (s1, h) = (replicas[1].clone(), hash.clone());
    assert_eq!(
        blocking(move || s1.consume_bootstrap(&h, 2_000))
            .await
            .unwrap(),
        None
    );
    assert_eq!(replicas[2].collect_garbage(2_000).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_policy_writers_on_three_replicas_lose_no_update() {
    let cluster = FakeCluster::start().await;
    let replicas = [
        cluster.store().await,
        cluster.store().await,
        cluster.store().await,
    ];
    let writers = 24;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let store = replicas[i % 3].clone();
        let port = 1000 + u16::try_from(i).unwrap();
        tasks.push(tokio::task::spawn_blocking(move || {
            store
                .put_policy_if(
                    "web",
                    Some("team-a"),
                    &policy_with_port(port),
                    5,
                    &Precondition::None,
                )
                .unwrap()
                .unwrap()
        }));
    }
    let mut revisions = HashSet::new();
    let mut by_revision = BTreeMap::new();
    for t in tasks {
        let stored = t.await.unwrap();
        assert!(
            revisions.insert(stored.revision),
            "a revision was handed out twice"
        );
        by_revision.insert(stored.revision, stored.document.clone());
    }
    assert_eq!(
        revisions.len(),
        writers,
        "every write landed with its own revision"
    );
    // What every replica serves in the end is the write with the highest revision.
    let (last_revision, last_document) = by_revision.iter().next_back().unwrap();
    for store in &replicas {
        eventually("replicas converge", Duration::from_secs(2), || {
            store
                .get_policy("web")
                .unwrap()
                .is_some_and(|p| p.revision == *last_revision)
        })
        .await;
        let served = store.get_policy("web").unwrap().unwrap();
        assert_eq!(&served.document, last_document);
        assert_eq!(served.namespace.as_deref(), Some("team-a"));
    }
    // The conflicts were real: the fake answered 409s and the store retried.
    assert!(
        cluster.api.conflicts_served() > 0,
        "no writer ever conflicted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_match_lets_exactly_one_of_two_replicas_replace_a_policy() {
    let cluster = FakeCluster::start().await;
    let a = cluster.store().await;
    let b = cluster.store().await;
    let sa = a.clone();
    let first =
        blocking(move || sa.put_policy_if("web", None, POLICY, 1, &Precondition::IfNoneMatchAny))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(first.namespace, None, "cluster-wide");
    eventually("B sees it", Duration::from_secs(2), || {
        b.get_policy("web").unwrap().is_some()
    })
    .await;
    let guard = Precondition::IfMatch(first.etag.clone());
    let (sa, sb, ga, gb) = (a.clone(), b.clone(), guard.clone(), guard);
    let ta = tokio::task::spawn_blocking(move || {
        sa.put_policy_if("web", None, &policy_with_port(1), 2, &ga)
            .unwrap()
    });
    let tb = tokio::task::spawn_blocking(move || {
        sb.put_policy_if("web", None, &policy_with_port(2), 2, &gb)
            .unwrap()
    });
    let results = [ta.await.unwrap(), tb.await.unwrap()];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    let winner = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
    assert_eq!(
        loser.as_deref(),
        Some(winner.etag.as_str()),
        "the loser learns the winner's etag"
    );
    assert!(winner.revision > first.revision);
    // A second create of the same name fails its If-None-Match.
    let sb = b.clone();
    let again =
        blocking(move || sb.put_policy_if("web", None, POLICY, 3, &Precondition::IfNoneMatchAny))
            .await
            .unwrap();
    assert!(again.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_applied_with_kubectl_is_validated_stamped_and_served() {
    let cluster = FakeCluster::start().await;
    let a = cluster.store().await;
    let b = cluster.store().await;
    let api: Api<crd::Policy> = Api::namespaced(cluster.client().await, "team-a");
    let document: palisade_policy::Policy = serde_yaml_ng::from_str(POLICY).unwrap();
    let object = crd::Policy::new("web", crd::PolicySpec(document.spec.clone()));
    api.create(&Default::default(), &object).await.unwrap();
    // Not served before a replica accepted it.
    eventually("B caches it", Duration::from_secs(2), || {
        b.get_policy("web").is_ok()
    })
    .await;
    assert_eq!(b.get_policy("web").unwrap(), None);
    let accept_all = |_: &palisade_policy::Policy, _: Option<&str>| Vec::new();
    eventually_async("A accepts it", || async {
        a.reconcile_policies(&accept_all).await.unwrap() == 1
    })
    .await;
    eventually("B serves it", Duration::from_secs(2), || {
        b.get_policy("web").unwrap().is_some()
    })
    .await;
    let served = b.get_policy("web").unwrap().unwrap();
    assert_eq!(served.namespace.as_deref(), Some("team-a"));
    let parsed = palisade_policy::parse_policy(served.document.as_bytes()).unwrap();
    assert_eq!(parsed.spec, document.spec);
    let stamped = api.get("web").await.unwrap();
    assert!(
        stamped
            .metadata
            .annotations
            .unwrap()
            .contains_key(ACCEPTED_ANNOTATION)
    );
    assert_eq!(stamped.status.unwrap().revision, Some(served.revision));

    // An edit that does not validate (denyAll beside egress rules) takes it
    // out of service and the status says why.
    let mut edited = api.get("web").await.unwrap();
    edited.spec.0.deny_all = true;
    api.replace("web", &Default::default(), &edited)
        .await
        .unwrap();
    eventually("B drops it", Duration::from_secs(2), || {
        b.get_policy("web").unwrap().is_none()
    })
    .await;
    // (A's own cache may take a moment to see the edit.)
    eventually_async("A rejects the edit", || async {
        a.reconcile_policies(&accept_all).await.unwrap();
        api.get("web")
            .await
            .unwrap()
            .status
            .unwrap()
            .accepted
            .as_deref()
            == Some("False")
    })
    .await;
    let status = api.get("web").await.unwrap().status.unwrap();
    assert_eq!(status.accepted.as_deref(), Some("False"));
    assert_eq!(status.errors.len(), 1, "{:?}", status.errors);
    assert!(
        status.errors[0].contains("spec.denyAll"),
        "{:?}",
        status.errors
    );
    assert_eq!(b.get_policy("web").unwrap(), None);
    // The check the gateway passes in is applied too (secrets, sources).
    edited = api.get("web").await.unwrap();
    edited.spec.0.deny_all = false;
    api.replace("web", &Default::default(), &edited)
        .await
        .unwrap();
    let refuse = |_: &palisade_policy::Policy, _: Option<&str>| {
        vec!["spec.credentials: refused by the check".to_owned()]
    };
    eventually_async("the check refuses it", || async {
        a.reconcile_policies(&refuse).await.unwrap();
        let status = api.get("web").await.unwrap().status.unwrap();
        status.errors == vec!["spec.credentials: refused by the check".to_owned()]
    })
    .await;
    assert_eq!(b.get_policy("web").unwrap(), None);
    // Fixed: accepted again under a new revision.
    eventually_async("A accepts the fix", || async {
        a.reconcile_policies(&accept_all).await.unwrap() == 1
    })
    .await;
    eventually("B serves the fix", Duration::from_secs(2), || {
        b.get_policy("web")
            .unwrap()
            .is_some_and(|p| p.revision > served.revision)
    })
    .await;
}

async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(2);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 2s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_live_in_kubernetes_secrets_and_reach_every_replica() {
    let cluster = FakeCluster::start().await;
    let a = cluster.store().await;
    let b = cluster.store().await;
    let data = BTreeMap::from([("token".to_owned(), "s3cr3t-value-never-logged".to_owned())]);
    let allowance = SecretAllowance {
        namespaces: vec!["team-a".into()],
        policies: vec![],
        hosts: vec!["api.example.com".into()],
    };
    let (sa, d, al) = (a.clone(), data.clone(), allowance.clone());
    let first = blocking(move || sa.put_secret("github", &d, &al, 7))
        .await
        .unwrap();
    assert_eq!(first.data, data);
    eventually("B has it", Duration::from_secs(2), || {
        b.get_secret("github").unwrap().is_some()
    })
    .await;
    let seen = b.get_secret("github").unwrap().unwrap();
    assert_eq!(seen.data, data);
    assert_eq!(seen.allowance, allowance);
    assert_eq!(seen.revision, first.revision);
    // A Kubernetes Secret holds it, base64 as the API has it; never a CR.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client().await, STORE_NS);
    let object = secrets.get("palisade-secret-github").await.unwrap();
    assert_eq!(
        object.data.unwrap()["token"].0,
        b"s3cr3t-value-never-logged".to_vec()
    );
    // The store's Debug never shows a value.
    assert!(!format!("{seen:?}").contains("s3cr3t"));
    let (sb, d) = (
        b.clone(),
        BTreeMap::from([("token".to_owned(), "rotated".to_owned())]),
    );
    let second = blocking(move || sb.put_secret("github", &d, &allowance, 8))
        .await
        .unwrap();
    assert!(second.revision > first.revision);
    eventually("A sees the rotation", Duration::from_secs(2), || {
        a.get_secret("github")
            .unwrap()
            .is_some_and(|s| s.data["token"] == "rotated")
    })
    .await;
    let sa = a.clone();
    assert!(blocking(move || sa.delete_secret("github")).await.unwrap());
    eventually("B sees the delete", Duration::from_secs(2), || {
        b.get_secret("github").unwrap().is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signing_keys_are_shared_and_a_rotation_on_one_replica_verifies_on_another() {
    let cluster = FakeCluster::start().await;
    let a = cluster.store().await;
    let b = cluster.store().await;
    let dir = tempfile::tempdir().unwrap();
    // Two replicas starting at once agree on one first key.
    let (sa, sb) = (a.clone(), b.clone());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let ka = tokio::task::spawn_blocking(move || {
        KeySet::load_or_create(&da, sa as Arc<dyn Store>, 600, 1_000).unwrap()
    });
    let kb = tokio::task::spawn_blocking(move || {
        KeySet::load_or_create(&db, sb as Arc<dyn Store>, 600, 1_000).unwrap()
    });
    let (ka, kb) = (Arc::new(ka.await.unwrap()), Arc::new(kb.await.unwrap()));
    assert_eq!(ka.active().kid(), kb.active().kid());
    // No key file is written: the private keys live in the Secret.
    assert!(
        !dir.path().join("a").exists()
            || std::fs::read_dir(dir.path().join("a"))
                .unwrap()
                .next()
                .is_none()
    );
    let old = ka.active().kid().to_owned();
    let k = ka.clone();
    let fresh = blocking(move || k.rotate(1_100)).await.unwrap();
    assert_ne!(fresh.kid(), old);
    // B has not reloaded: an unknown kid makes it (it was stored before any signing).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (k, kid) = (kb.clone(), fresh.kid().to_owned());
    let on_b = blocking(move || k.get(&kid, 1_101))
        .await
        .expect("B verifies with the new key");
    let message = b"header.payload";
    assert!(on_b.verify(message, &fresh.sign(message)));
    // The old key still verifies on both, until its window ends.
    assert!(kb.get(&old, 1_101).is_some());
    let k = kb.clone();
    blocking(move || k.refresh(1_101)).await.unwrap();
    assert_eq!(
        kb.active().kid(),
        fresh.kid(),
        "B signs with the new key after its refresh"
    );
    // Concurrent rotations on both: both land, one after the other.
    let (k1, k2) = (ka.clone(), kb.clone());
    let r1 = tokio::task::spawn_blocking(move || k1.rotate(1_200).unwrap());
    let r2 = tokio::task::spawn_blocking(move || k2.rotate(1_200).unwrap());
    let (r1, r2) = (r1.await.unwrap(), r2.await.unwrap());
    assert_ne!(r1.kid(), r2.kid());
    let k = ka.clone();
    blocking(move || k.refresh(1_201)).await.unwrap();
    let infos = ka.infos();
    assert_eq!(infos.iter().filter(|i| i.active).count(), 1);
    for kid in [&old, fresh.kid(), r1.kid(), r2.kid()] {
        assert!(infos.iter().any(|i| i.kid == *kid), "{kid} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_resync_after_compaction_and_an_api_server_restart() {
    let cluster = FakeCluster::start().await;
    let a = cluster.store().await;
    let b = cluster.store().await;
    let sa = a.clone();
    blocking(move || sa.put_policy_if("web", None, POLICY, 1, &Precondition::None))
        .await
        .unwrap()
        .unwrap();
    // Old resourceVersions gone: watches get 410 and relist.
    cluster.api.compact();
    let sa = a.clone();
    let second = blocking(move || {
        sa.put_policy_if("web", None, &policy_with_port(2), 2, &Precondition::None)
    })
    .await
    .unwrap()
    .unwrap();
    eventually("B after compaction", Duration::from_secs(3), || {
        b.get_policy("web")
            .unwrap()
            .is_some_and(|p| p.revision == second.revision)
    })
    .await;
    // The API server goes away: past the stale bound, reads fail instead of
    // serving what may be stale; when it is back, everything resyncs.
    cluster.set_down(true).await;
    tokio::time::sleep(STALE_BOUND + Duration::from_secs(2)).await;
    assert!(
        b.get_policy("web").is_err(),
        "served data staler than the bound"
    );
    assert!(b.list_sandboxes().is_err());
    cluster.set_down(false).await;
    let sa = a.clone();
    let third = loop {
        let sa = sa.clone();
        match blocking(move || {
            sa.put_policy_if("web", None, &policy_with_port(3), 3, &Precondition::None)
        })
        .await
        {
            Ok(Ok(stored)) => break stored,
            // Refused until the watches have listed again.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    eventually("B after the restart", Duration::from_secs(5), || {
        b.get_policy("web")
            .ok()
            .flatten()
            .is_some_and(|p| p.revision == third.revision)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crds_admit_the_examples_and_refuse_what_is_invalid() {
    use kube::api::{ApiResource, DynamicObject, PostParams};
    let cluster = FakeCluster::start().await;
    let client = cluster.client().await;
    let policies: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "team-a",
        &ApiResource::erase::<crd::Policy>(&()),
    );
    // `kubectl apply -f policies/examples/X.yaml` works as it is.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples");
    let mut applied = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let object: DynamicObject = serde_yaml_ng::from_str(&text).unwrap();
        policies
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
        applied += 1;
    }
    assert!(applied >= 4);
    let refused = |e: kube::Error| match e {
        kube::Error::Api(status) => (status.code, status.message.clone()),
        other => panic!("{other}"),
    };
    // Unknown fields and wrong types are refused at admission.
    let bad: DynamicObject = serde_yaml_ng::from_str(
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata: {name: bad}\nspec: {mode: enforce, egres: []}\n",
    )
    .unwrap();
    let (code, message) = refused(
        policies
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("egres"), "{message}");
    let bad: DynamicObject = serde_yaml_ng::from_str(
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata: {name: bad}\nspec: {mode: sometimes}\n",
    )
    .unwrap();
    assert_eq!(
        refused(
            policies
                .create(&PostParams::default(), &bad)
                .await
                .unwrap_err()
        )
        .0,
        422
    );
    // A Sandbox that would run the agent as root is refused.
    let sandboxes: Api<DynamicObject> =
        Api::namespaced_with(client, "team-a", &ApiResource::erase::<crd::Sandbox>(&()));
    let root: DynamicObject = serde_yaml_ng::from_str(&format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: Sandbox\nmetadata: {{name: {}}}\n\
         spec: {{displayName: demo, owner: 'user:x', createdAt: 1, uid: 0, gid: 0}}\n",
        SandboxId::generate()
    ))
    .unwrap();
    let (code, message) = refused(
        sandboxes
            .create(&PostParams::default(), &root)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422, "{message}");
    let fine: DynamicObject = serde_yaml_ng::from_str(&format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: Sandbox\nmetadata: {{name: {}}}\n\
         spec: {{displayName: demo, owner: 'user:x', createdAt: 1, uid: 1000, gid: 1000}}\n",
        SandboxId::generate()
    ))
    .unwrap();
    sandboxes
        .create(&PostParams::default(), &fine)
        .await
        .unwrap();
}
