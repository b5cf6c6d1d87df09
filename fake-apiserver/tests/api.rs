//! The fake apiserver driven only through kube-rs: each test asserts the exact codes,
//! reasons and state a real kube-apiserver produces.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use palisade_fake_apiserver::{Config, FakeApiServer, Verb};
use serde_json::json;

const NS: &str = "work";
const WIDGET_CRD: &str = include_str!("fixtures/widget-crd.yaml");

async fn client(fake: &FakeApiServer, dir: &tempfile::TempDir) -> kube::Client {
    let path = fake.write_kubeconfig(dir.path());
    let kc = kube::config::Kubeconfig::read_from(path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

async fn setup(config: Config) -> (FakeApiServer, kube::Client, tempfile::TempDir) {
    let fake = FakeApiServer::start_with(config).await;
    fake.create_namespace(NS, &[("team", "a")]);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&fake, &dir).await;
    (fake, c, dir)
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("not an API error: {other:?}"),
    }
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
        ..Default::default()
    }
}

fn pod(name: &str, owner: Option<OwnerReference>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".to_owned(),
                image: Some("busybox".to_owned()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn eventually<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never happened: {what}");
}

fn widgets(c: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.palisade.dev", "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(c.clone(), NS, &ar)
}

fn widget(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "test.palisade.dev/v1",
        "kind": "Widget",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap()
}

#[tokio::test]
async fn create_get_list_select_and_conflicts() {
    let (fake, c, _d) = setup(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let a = api
        .create(
            &PostParams::default(),
            &cm("a", &[("app", "web"), ("tier", "front")]),
        )
        .await
        .unwrap();
    let rv_a: u64 = a
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    api.create(&PostParams::default(), &cm("b", &[("app", "db")]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    let b = api.get("b").await.unwrap();
    assert!(b.metadata.resource_version.unwrap().parse::<u64>().unwrap() > rv_a);

    for (sel, want) in [
        ("app=web", vec!["a"]),
        ("app==db", vec!["b"]),
        ("app!=web", vec!["b", "c"]),
        ("app", vec!["a", "b"]),
        ("!app", vec!["c"]),
        ("app in (web,db)", vec!["a", "b"]),
        ("app notin (web)", vec!["b", "c"]),
    ] {
        let got: Vec<String> = api
            .list(&ListParams::default().labels(sel))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| o.metadata.name.unwrap())
            .collect();
        assert_eq!(got, want, "{sel}");
    }
    let l = api
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    assert_eq!(
        l.metadata.resource_version.unwrap(),
        fake.resource_version().to_string()
    );
    // Paging.
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = api
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items[0].metadata.name.as_deref(), Some("c"));

    // AlreadyExists.
    let (code, reason, msg) = api_error(
        api.create(&PostParams::default(), &cm("a", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (409, "AlreadyExists", "configmaps \"a\" already exists")
    );
    // NotFound, and a namespace that does not exist.
    assert_eq!(api_error(api.get("nope").await.unwrap_err()).0, 404);
    let (code, _, msg) = api_error(
        Api::<ConfigMap>::namespaced(c.clone(), "missing")
            .create(&PostParams::default(), &cm("x", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, msg.as_str()),
        (404, "namespaces \"missing\" not found")
    );
    // generateName; invalid name.
    let mut generated = cm("", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".to_owned());
    let g = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(
        g.metadata.name.as_ref().unwrap().starts_with("gen-")
            && g.metadata.name.unwrap().len() == 9
    );
    let (code, reason, msg) = api_error(
        api.create(&PostParams::default(), &cm("Bad_Name", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        msg.starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"),
        "{msg}"
    );

    // Replace with a stale resourceVersion: 409 Conflict; a fresh one works.
    let mut stale = a.clone();
    stale.data = Some(BTreeMap::from([("k".to_owned(), "new".to_owned())]));
    let fresh = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap();
    let (code, reason, msg) = api_error(
        api.replace("a", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        msg,
        "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(fake.conflicts_served(), 1);

    // Merge patch; a stale resourceVersion inside the patch is a precondition.
    let p = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "k2": "v2" } })),
        )
        .await
        .unwrap();
    assert_eq!(p.data.unwrap().get("k2").map(String::as_str), Some("v2"));
    let stale_rv = fresh.metadata.resource_version.unwrap();
    let e = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "resourceVersion": stale_rv }, "data": { "x": "y" } }),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(e).0, 409);
    // JSON patch.
    let j = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([{ "op": "remove", "path": "/data/k2" }])).unwrap(),
            ),
        )
        .await
        .unwrap();
    assert!(!j.data.unwrap().contains_key("k2"));
    // Delete with a stale precondition: 409.
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some(stale_rv),
            uid: None,
        }),
        ..Default::default()
    };
    let (code, reason, msg) = api_error(api.delete("a", &dp).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        msg.contains("Precondition failed: ResourceVersion in precondition"),
        "{msg}"
    );
    assert!(
        api.delete("a", &DeleteParams::default())
            .await
            .unwrap()
            .is_right()
    );
    assert_eq!(api_error(api.get("a").await.unwrap_err()).0, 404);
    assert_eq!(fake.requests(Verb::Create, "configmaps"), 7);
    assert_eq!(fake.requests(Verb::Delete, "configmaps"), 2);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed_and_watch_sees_deleted() {
    let (fake, c, _d) = setup(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let mut obj = cm("held", &[]);
    obj.metadata.finalizers = Some(vec!["test.palisade.dev/hold".to_owned()]);
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    let deleted = api.delete("held", &DeleteParams::default()).await.unwrap();
    let marked = deleted
        .left()
        .expect("a held object comes back, not a Status");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(
        api.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    // No new finalizers once deleting.
    let e = api
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "finalizers": ["test.palisade.dev/hold", "other/x"] } }),
            ),
        )
        .await
        .unwrap_err();
    let (code, reason, msg) = api_error(e);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        msg.contains("no new finalizers can be added if the object is being deleted"),
        "{msg}"
    );

    let mut events = api
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
    assert_eq!(api_error(api.get("held").await.unwrap_err()).0, 404);
    let mut kinds = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(2), events.next()).await {
        let ev = ev.unwrap();
        let k = match ev {
            kube::api::WatchEvent::Modified(_) => "MODIFIED",
            kube::api::WatchEvent::Deleted(_) => "DELETED",
            kube::api::WatchEvent::Added(_) => "ADDED",
            _ => continue,
        };
        kinds.push(k);
        if k == "DELETED" {
            break;
        }
    }
    assert_eq!(
        kinds,
        ["MODIFIED", "DELETED"],
        "the deletion mark, then the removal"
    );
    assert!(fake.get_object("configmaps", Some(NS), "held").is_none());
}

#[tokio::test]
async fn owner_references_cascade_or_orphan() {
    let (fake, c, _d) = setup(Config::default().crd_yaml(WIDGET_CRD)).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    let owner_ref = |kind: &str, av: &str, name: &str, uid: String| OwnerReference {
        api_version: av.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        uid,
        ..Default::default()
    };
    let owner = cms
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .unwrap();
    let uid = owner.metadata.uid.unwrap();
    pods.create(
        &PostParams::default(),
        &pod(
            "dep",
            Some(owner_ref("ConfigMap", "v1", "owner", uid.clone())),
        ),
    )
    .await
    .unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually("the dependent pod is collected", || {
        fake.get_object("pods", Some(NS), "dep").is_none()
    })
    .await;

    // A custom resource owner.
    let w = widgets(&c)
        .create(
            &PostParams::default(),
            &widget("w-owner", json!({ "color": "blue", "size": 2 })),
        )
        .await
        .unwrap();
    let wuid = w.metadata.uid.unwrap();
    pods.create(
        &PostParams::default(),
        &pod(
            "dep2",
            Some(owner_ref("Widget", "test.palisade.dev/v1", "w-owner", wuid)),
        ),
    )
    .await
    .unwrap();
    widgets(&c)
        .delete("w-owner", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the pod owned by a Widget is collected", || {
        fake.get_object("pods", Some(NS), "dep2").is_none()
    })
    .await;

    // Orphan: the dependent stays, without the reference.
    let owner = cms
        .create(&PostParams::default(), &cm("owner2", &[]))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod(
            "kept",
            Some(owner_ref(
                "ConfigMap",
                "v1",
                "owner2",
                owner.metadata.uid.unwrap(),
            )),
        ),
    )
    .await
    .unwrap();
    cms.delete("owner2", &DeleteParams::orphan()).await.unwrap();
    eventually("the orphaning owner is gone", || {
        fake.get_object("configmaps", Some(NS), "owner2").is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kept = pods.get("kept").await.unwrap();
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // Foreground: the owner waits for its dependents.
    let owner = cms
        .create(&PostParams::default(), &cm("owner3", &[]))
        .await
        .unwrap();
    let mut fin = pod(
        "slow",
        Some(owner_ref(
            "ConfigMap",
            "v1",
            "owner3",
            owner.metadata.uid.unwrap(),
        )),
    );
    fin.metadata.finalizers = Some(vec!["test/hold".to_owned()]);
    pods.create(&PostParams::default(), &fin).await.unwrap();
    cms.delete("owner3", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("the pod is being deleted", || pods_deleting(&fake, "slow")).await;
    let o = cms.get("owner3").await.unwrap();
    assert_eq!(o.metadata.finalizers.unwrap(), ["foregroundDeletion"]);
    pods.patch(
        "slow",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
    eventually("the foreground owner goes after its dependent", || {
        fake.get_object("configmaps", Some(NS), "owner3").is_none()
    })
    .await;
}

fn pods_deleting(fake: &FakeApiServer, name: &str) -> bool {
    fake.get_object("pods", Some(NS), name)
        .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())
}

#[tokio::test]
async fn watcher_with_bookmarks_sees_changes() {
    let (fake, c, _d) =
        setup(Config::default().bookmark_interval(Duration::from_millis(100))).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let mut stream = watcher(
        api.clone(),
        watcher::Config {
            bookmarks: true,
            ..Default::default()
        },
    )
    .boxed();
    // Initial list done.
    loop {
        if let watcher::Event::InitDone = stream.next().await.unwrap().unwrap() {
            break;
        }
    }
    api.create(&PostParams::default(), &cm("seen", &[]))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Apply(o) => assert_eq!(o.metadata.name.as_deref(), Some("seen")),
        other => panic!("{other:?}"),
    }
    // Bookmarks flow while idle (the watch stays the same one).
    let watches = fake.watches_opened();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.watches_opened(), watches);
    api.delete("seen", &DeleteParams::default()).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Delete(o) => assert_eq!(o.metadata.name.as_deref(), Some("seen")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn raw_watch_bookmarks_and_compaction_answer_410() {
    let (fake, c, _d) = setup(Config::default().bookmark_interval(Duration::from_millis(50))).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let old = api
        .create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    let mut s = api
        .watch(
            &kube::api::WatchParams {
                bookmarks: true,
                ..Default::default()
            },
            &fake.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(2), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        kube::api::WatchEvent::Bookmark(b) => assert_eq!(
            b.metadata.resource_version,
            fake.resource_version().to_string()
        ),
        other => panic!("{other:?}"),
    }
    // A write after `x`, then compaction: `x`'s resourceVersion is now too old.
    api.create(&PostParams::default(), &cm("y", &[]))
        .await
        .unwrap();
    fake.compact();
    let mut s = api
        .watch(
            &kube::api::WatchParams::default(),
            &old.metadata.resource_version.unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match s.next().await.unwrap().unwrap() {
        kube::api::WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reflector_converges_after_compaction_and_restart() {
    let (fake, c, _d) = setup(Config::default().restart_pause(Duration::from_millis(300))).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    api.create(&PostParams::default(), &cm("one", &[]))
        .await
        .unwrap();
    let (reader, writer) = reflector::store();
    // No bookmarks: the watcher's resourceVersion stays at the last change it saw, so a
    // compaction past it makes the next watch (every 1 s) answer 410.
    let cfg = watcher::Config::default().timeout(1).disable_bookmarks();
    let run = tokio::spawn(
        reflector(writer, watcher(api.clone(), cfg))
            .default_backoff()
            .for_each(|_| async {}),
    );
    let names = move || {
        let mut n: Vec<String> = reader
            .state()
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect();
        n.sort();
        n
    };
    let names2 = names.clone();
    eventually("the first list", || names() == ["one"]).await;
    // Compact, and write while the watch is between resourceVersions: the 410 makes the
    // watcher relist, and the store converges.
    fake.compact();
    api.create(&PostParams::default(), &cm("two", &[]))
        .await
        .unwrap();
    eventually("sees two", || names2() == ["one", "two"]).await;
    // A raw watch open across the restart is cut: its stream ends.
    let mut open = api
        .watch(
            &kube::api::WatchParams::default().disable_bookmarks(),
            &fake.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    let restart = fake.restart();
    let cut = async {
        loop {
            match open.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    };
    let ((), cut) = tokio::join!(restart, tokio::time::timeout(Duration::from_secs(5), cut));
    assert!(cut.is_ok(), "the restart closed the open watch");
    api.create(&PostParams::default(), &cm("three", &[]))
        .await
        .unwrap();
    api.delete("one", &DeleteParams::default()).await.unwrap();
    let names3 = names2.clone();
    eventually("sees the writes made after the restart", || {
        names3() == ["three", "two"]
    })
    .await;
    // A change the watcher does not watch moves the global resourceVersion past the last
    // one it saw; compacting there makes its next watch get 410 Expired, and it relists.
    let lists = fake.requests(Verb::List, "configmaps");
    Api::<Secret>::namespaced(c.clone(), NS)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("bump".to_owned()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    fake.compact();
    // When the open watch times out, the resumed one is answered 410 and the watcher lists.
    eventually("a relist after 410", || {
        fake.requests(Verb::List, "configmaps") > lists
    })
    .await;
    api.create(&PostParams::default(), &cm("four", &[]))
        .await
        .unwrap();
    eventually("converges after the relist", || {
        names2() == ["four", "three", "two"]
    })
    .await;
    run.abort();
}

#[tokio::test]
async fn custom_resources_are_validated_strictly() {
    let (fake, c, _d) = setup(Config::default().crd_yaml(WIDGET_CRD)).await;
    let api = widgets(&c);
    let ok = api
        .create(&PostParams::default(), &widget("w1", json!({ "color": "red", "size": 3, "port": "http", "extra": { "any": 1 }, "shape": { "kind": "square", "sides": 4 } })))
        .await
        .unwrap();
    assert_eq!(ok.data["spec"]["mode"], "auto", "defaults are applied");
    assert_eq!(ok.metadata.generation, Some(1));
    let cases = [
        (
            json!({ "color": "red", "size": 3, "bogus": true }),
            "spec.bogus",
            "unknown field \"spec.bogus\"",
        ),
        (
            json!({ "color": "red", "size": 3, "shape": { "kind": "x", "corners": 1 } }),
            "spec.shape.corners",
            "unknown field",
        ),
        (
            json!({ "color": "red", "size": "three" }),
            "spec.size",
            "must be of type integer",
        ),
        (
            json!({ "color": "pink", "size": 3 }),
            "spec.color",
            "Unsupported value: \"pink\"",
        ),
        (json!({ "color": "red" }), "spec.size", "Required value"),
        (
            json!({ "color": "red", "size": 11 }),
            "spec.size",
            "less than or equal to 10",
        ),
        (
            json!({ "color": "red", "size": 3, "label": "UPPER" }),
            "spec.label",
            "should match '^[a-z]+$'",
        ),
        (
            json!({ "color": "red", "size": 3, "port": true }),
            "spec.port",
            "integer,string",
        ),
        (
            json!({ "color": "red", "size": 3, "shape": {} }),
            "spec.shape.kind",
            "Required value",
        ),
        (
            json!({ "color": "red", "size": 7 }),
            "spec",
            "red widgets are at most 5",
        ),
    ];
    for (i, (spec, field, text)) in cases.into_iter().enumerate() {
        let e = api
            .create(
                &PostParams::default(),
                &widget(&format!("bad{i}"), spec.clone()),
            )
            .await
            .unwrap_err();
        let kube::Error::Api(s) = e else {
            panic!("{spec}")
        };
        assert_eq!(
            (s.code, s.reason.as_str()),
            (422, "Invalid"),
            "{spec}: {}",
            s.message
        );
        assert!(s.message.contains(text), "{spec}: {}", s.message);
        let causes = s.details.as_ref().unwrap().causes.clone();
        assert!(
            causes.iter().any(|c| c.field == field),
            "{spec}: {causes:?}"
        );
    }
    // Status via /status does not touch spec; spec writes do not touch status.
    let mut with_status = ok.clone();
    with_status.data["status"] = json!({ "phase": "Ready" });
    with_status.data["spec"]["size"] = json!(4);
    let after = api
        .replace_status("w1", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(after.data["status"]["phase"], "Ready");
    assert_eq!(after.data["spec"]["size"], 3);
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    let mut spec_write = after.clone();
    spec_write.data["spec"]["size"] = json!(5);
    spec_write.data["status"] = json!({ "phase": "Broken" });
    let after = api
        .replace("w1", &PostParams::default(), &spec_write)
        .await
        .unwrap();
    assert_eq!(after.data["spec"]["size"], 5);
    assert_eq!(after.data["status"]["phase"], "Ready");
    assert_eq!(after.metadata.generation, Some(2));
    // Strategic merge patch is not for custom resources.
    let e = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Strategic(json!({ "spec": { "size": 2 } })),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(e).0, 415);
    assert!(
        fake.get_object(
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
            "widgets.test.palisade.dev"
        )
        .is_some()
    );
}

#[tokio::test]
async fn leases_conflict_and_secrets_round_trip() {
    let (_fake, c, _d) = setup(Config::default()).await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), NS);
    let l = leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some("leader".to_owned()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("a".to_owned()),
                    lease_duration_seconds: Some(15),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    let mut mine = l.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".to_owned());
    leases
        .replace("leader", &PostParams::default(), &mine)
        .await
        .unwrap();
    let mut theirs = l.clone();
    theirs.spec.as_mut().unwrap().holder_identity = Some("c".to_owned());
    let (code, reason, _) = api_error(
        leases
            .replace("leader", &PostParams::default(), &theirs)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        leases
            .get("leader")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("b")
    );

    let secrets: Api<Secret> = Api::namespaced(c.clone(), NS);
    let bytes = vec![0u8, 1, 2, 255, b'x'];
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("s".to_owned()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "bin".to_owned(),
                    ByteString(bytes.clone()),
                )])),
                string_data: Some(BTreeMap::from([("text".to_owned(), "hello".to_owned())])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let s = secrets.get("s").await.unwrap();
    let data = s.data.unwrap();
    assert_eq!(data["bin"].0, bytes);
    assert_eq!(data["text"].0, b"hello");
    assert!(s.string_data.is_none(), "stringData is write-only");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
}

#[tokio::test]
async fn token_review_answers_what_was_configured() {
    let (fake, c, _d) = setup(Config::default()).await;
    fake.review(
        "good",
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec!["aud".to_owned()]),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:a:b".to_owned()),
                ..Default::default()
            }),
            error: None,
        },
    );
    let api: Api<TokenReview> = Api::all(c.clone());
    let review = |token: &str| TokenReview {
        metadata: Default::default(),
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: Some(vec!["aud".to_owned()]),
        },
        status: None,
    };
    let ok = api
        .create(&PostParams::default(), &review("good"))
        .await
        .unwrap();
    let st = ok.status.unwrap();
    assert_eq!(st.authenticated, Some(true));
    assert_eq!(st.audiences.unwrap(), ["aud"]);
    let bad = api
        .create(&PostParams::default(), &review("unknown"))
        .await
        .unwrap();
    assert_eq!(bad.status.unwrap().authenticated, Some(false));
    assert_eq!(fake.reviews_seen(), 2);
    assert_eq!(api_error(api.get("x").await.unwrap_err()).0, 405);
    // A wrong bearer token is 401 and counted.
    let dir = tempfile::tempdir().unwrap();
    let path = fake.write_kubeconfig(dir.path());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(palisade_fake_apiserver::CLIENT_TOKEN, "wrong");
    std::fs::write(&path, text).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let bad_client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let e = Api::<ConfigMap>::namespaced(bad_client, NS)
        .get("x")
        .await
        .unwrap_err();
    assert_eq!(api_error(e).0, 401);
    assert_eq!(fake.unauthorized_seen(), 1);
}

#[tokio::test]
async fn fault_modes_answer_500_or_hang() {
    let (fake, c, _d) = setup(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    fake.set_mode(palisade_fake_apiserver::Mode::Fail500);
    let (code, reason, _) = api_error(api.get("x").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    fake.set_mode(palisade_fake_apiserver::Mode::Hang);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), api.get("x"))
            .await
            .is_err(),
        "a hung server never answers"
    );
    fake.set_mode(palisade_fake_apiserver::Mode::Normal);
    assert_eq!(api_error(api.get("x").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn deleting_a_namespace_terminates_its_content() {
    let (fake, c, _d) = setup(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let mut held = cm("inside", &[]);
    held.metadata.finalizers = Some(vec!["test/hold".to_owned()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    let ns = nss.get(NS).await.unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        NS
    );
    let marked = nss
        .delete(NS, &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(marked.status.unwrap().phase.as_deref(), Some("Terminating"));
    // Held open by the finalizer of its content: terminating, refusing new content.
    let (code, reason, msg) = api_error(
        api.create(&PostParams::default(), &cm("late", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert!(msg.contains("because it is being terminated"), "{msg}");
    eventually("the content is being deleted", || {
        fake.get_object("configmaps", Some(NS), "inside")
            .is_some_and(|o| o["metadata"]["deletionTimestamp"].is_string())
    })
    .await;
    assert!(fake.get_object("namespaces", None, NS).is_some());
    api.patch(
        "inside",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
    eventually("the namespace goes once empty", || {
        fake.get_object("namespaces", None, NS).is_none()
    })
    .await;
}

#[tokio::test]
async fn field_validation_warn_prunes_unknown_fields() {
    let (_fake, c, _d) = setup(Config::default().crd_yaml(WIDGET_CRD)).await;
    let api = widgets(&c);
    let pp = PostParams::default();
    let body = widget("w", json!({ "color": "green", "size": 1, "bogus": 1 }));
    assert_eq!(api_error(api.create(&pp, &body).await.unwrap_err()).0, 422);
    let req = kube::core::Request::new("/apis/test.palisade.dev/v1/namespaces/work/widgets");
    let mut http_req = req.create(&pp, serde_json::to_vec(&body).unwrap()).unwrap();
    let sep = if http_req.uri().query().is_some() {
        '&'
    } else {
        '?'
    };
    *http_req.uri_mut() = format!("{}{sep}fieldValidation=Warn", http_req.uri())
        .parse()
        .unwrap();
    let created: DynamicObject = c.request(http_req).await.unwrap();
    assert!(created.data["spec"].get("bogus").is_none(), "pruned");
    assert_eq!(created.data["spec"]["size"], 1);
}

#[tokio::test]
async fn label_selected_watches_see_objects_enter_and_leave() {
    let (_fake, c, _d) = setup(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let o = api
        .create(&PostParams::default(), &cm("m", &[("app", "a")]))
        .await
        .unwrap();
    let mut s = api
        .watch(
            &kube::api::WatchParams::default().labels("app=b"),
            &o.metadata.resource_version.unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    let relabel = |v: &str| Patch::Merge(json!({ "metadata": { "labels": { "app": v } } }));
    api.patch("m", &PatchParams::default(), &relabel("b"))
        .await
        .unwrap();
    api.patch("m", &PatchParams::default(), &relabel("c"))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(2), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            kube::api::WatchEvent::Added(_) => kinds.push("ADDED"),
            kube::api::WatchEvent::Deleted(_) => kinds.push("DELETED"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(kinds, ["ADDED", "DELETED"]);
}

#[tokio::test]
async fn streaming_list_watchers_get_initial_events_and_their_end() {
    let (_fake, c, _d) = setup(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    api.create(&PostParams::default(), &cm("pre", &[]))
        .await
        .unwrap();
    let mut s = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(o) => seen.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["pre"]);
}
