//! Three real `palisade gateway serve --store kubernetes` processes on one
//! strict fake API server: one store, any replica serves any request, one
//! leader, and a replica killed with SIGKILL loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::{FakeCluster, POLICY, STORE_NS, policy_with_port};
use http::Method;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use palisade_gateway::client::GatewayClient;
use support::{ADMIN_TOKEN, get, post, put, sample, write_admin_token};

/// How long a replica may take to be ready.
const PATIENCE: Duration = Duration::from_secs(60);
/// `--lease-duration` of the replicas.
const LEASE: Duration = Duration::from_secs(3);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    name: &'static str,
    child: Child,
    api: SocketAddr,
    admin: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    async fn start(name: &'static str, cluster: &FakeCluster, dir: &Path) -> Replica {
        let token = write_admin_token(dir);
        let (api, admin) = (free_port(), free_port());
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
        cmd.args([
            "gateway",
            "serve",
            "--insecure-plaintext",
            "--store",
            "kubernetes",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{api}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--data-dir")
        .arg(dir.join(format!("{name}-data")))
        .arg("--admin-token-file")
        .arg(&token)
        .arg("--kube-config")
        .arg(cluster.kubeconfig())
        .arg("--store-namespace")
        .arg(STORE_NS)
        .arg("--issuer")
        .arg("http://palisade-gateway.test")
        .arg("--lease-duration")
        .arg(format!("{}s", LEASE.as_secs()))
        .env_remove("PALISADE_CONFIG")
        .env("POD_NAME", name)
        .env("PALISADE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        let mut replica = Replica {
            name,
            child: cmd.spawn().unwrap(),
            api: SocketAddr::from(([127, 0, 0, 1], api)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            log,
        };
        let ready = GatewayClient::new(&format!("http://{}", replica.admin), None, None).unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = replica.child.try_wait().unwrap() {
                panic!(
                    "{name} exited with {status} before /ready:\n{}",
                    replica.log()
                );
            }
            if let Ok(a) = ready.send(Method::GET, "/ready", None, Bytes::new()).await
                && a.status == 200
            {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready:\n{}",
                replica.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self, token: Option<&str>) -> GatewayClient {
        GatewayClient::new(
            &format!("http://{}", self.api),
            token.map(str::to_owned),
            None,
        )
        .unwrap()
    }

    fn admin_client(&self) -> GatewayClient {
        self.client(Some(ADMIN_TOKEN))
    }

    async fn is_leader(&self) -> bool {
        let c = GatewayClient::new(&format!("http://{}", self.admin), None, None).unwrap();
        match c.send(Method::GET, "/metrics", None, Bytes::new()).await {
            Ok(a) if a.status == 200 => {
                sample(&String::from_utf8_lossy(&a.body), "palisade_gateway_leader") == 1.0
            }
            _ => false,
        }
    }

    fn kill(&mut self) {
        // SIGKILL: no shutdown, no Lease vacated, requests cut mid-way.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

async fn put_policy(c: &GatewayClient, namespace: &str, document: &str) -> (u16, Option<u64>) {
    let a = put(
        c,
        &format!("/v1/policies/web?namespace={namespace}"),
        document,
    )
    .await;
    let revision = a.json().ok().and_then(|v| v["revision"].as_u64());
    (a.status.as_u16(), revision)
}

/// [`put_policy`] to a replica that may die mid-request: `None` when it did.
async fn try_put_policy(c: &GatewayClient, document: &str) -> Option<(u16, Option<u64>)> {
    let a = c
        .send(
            Method::PUT,
            "/v1/policies/web?namespace=team-a",
            Some("application/yaml"),
            Bytes::from(document.to_owned()),
        )
        .await
        .ok()?;
    let revision = a.json().ok().and_then(|v| v["revision"].as_u64());
    Some((a.status.as_u16(), revision))
}

async fn leaders(replicas: &[&Replica]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for r in replicas {
        if r.is_leader().await {
            out.push(r.name);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_store_and_survive_a_sigkill() {
    let cluster = FakeCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Replica::start("replica-a", &cluster, dir.path()).await;
    let b = Replica::start("replica-b", &cluster, dir.path()).await;
    let c = Replica::start("replica-c", &cluster, dir.path()).await;

    // A policy written on C, a sandbox created on A.
    let (status, first_revision) = put_policy(&c.admin_client(), "team-a", POLICY).await;
    assert_eq!(status, 200, "{}", c.log());
    let first_revision = first_revision.unwrap();
    let spec = serde_json::json!({ "name": "demo", "namespace": "team-a", "policy": "web" });
    let created = support::post_json(&a.admin_client(), "/v1/sandboxes", &spec).await;
    assert_eq!(created.status, 201, "{:?}\n{}", created.body, a.log());
    let created = created.json().unwrap();
    let id = created["sandbox"]["id"].as_str().unwrap().to_owned();
    let bootstrap = created["bootstrapToken"].as_str().unwrap().to_owned();
    // B serves the sandbox A created.
    let seen = get(&b.admin_client(), &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(seen.status, 200, "{:?}", seen.body);

    // The one-time token, presented at all three at once: exactly one JWT.
    let mut issues = Vec::new();
    for r in [&a, &b, &c, &a, &b, &c] {
        let client = r.client(Some(&bootstrap));
        issues.push(tokio::spawn(async move {
            post(&client, "/v1/token:issue").await
        }));
    }
    let mut jwt = None;
    let mut refused = 0;
    for t in issues {
        let answer = t.await.unwrap();
        match answer.status.as_u16() {
            200 => {
                assert!(jwt.is_none(), "a second JWT for one bootstrap token");
                jwt = Some(answer.json().unwrap()["token"].as_str().unwrap().to_owned());
            }
            401 => refused += 1,
            other => panic!("token:issue answered {other}: {:?}", answer.body),
        }
    }
    assert_eq!(refused, 5);
    let jwt = jwt.expect("one token:issue succeeds");

    // A policy written on C reaches a sidecar long-polling on A within 2 s.
    let poller = a.client(Some(&jwt));
    let path = format!("/v1/sandboxes/{id}/policy?revision={first_revision}&wait=20s");
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let answer = get(&poller, &path).await;
        (answer, started)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = Instant::now();
    let (status, second_revision) =
        put_policy(&c.admin_client(), "team-a", &policy_with_port(8443)).await;
    assert_eq!(status, 200);
    let (answer, _) = poll.await.unwrap();
    let delay = written.elapsed();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json().unwrap()["revision"].as_u64(), second_revision);
    assert!(
        delay < Duration::from_secs(2),
        "the change took {delay:?} to reach A"
    );
    eprintln!("policy write on C reached the long-poll on A in {delay:?}");

    // Key rotation on A: a token A signs with the new key verifies on B.
    let rotated = post(&a.admin_client(), "/v1/keys:rotate").await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let refreshed = post(&a.client(Some(&jwt)), "/v1/token:refresh").await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.body);
    let refreshed = refreshed.json().unwrap();
    let new_kid = refreshed["kid"].as_str().unwrap().to_owned();
    let new_jwt = refreshed["token"].as_str().unwrap().to_owned();
    let listed = rotated.json().unwrap();
    let active: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["active"] == true)
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(
        active,
        [new_kid.as_str()],
        "A signs with the key it rotated to: {listed}"
    );
    let on_b = post(&b.client(Some(&new_jwt)), "/v1/token:refresh").await;
    assert_eq!(on_b.status, 200, "B refused A's new key: {:?}", on_b.body);

    // Concurrent writers on all three replicas: every acknowledged write has
    // its own revision.
    let mut writers = Vec::new();
    for (i, r) in [&a, &b, &c].iter().cycle().take(15).enumerate() {
        let client = r.admin_client();
        let port = 2000 + u16::try_from(i).unwrap();
        writers.push(tokio::spawn(async move {
            put_policy(&client, "team-a", &policy_with_port(port)).await
        }));
    }
    let mut revisions = HashSet::new();
    for w in writers {
        let (status, revision) = w.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            revisions.insert(revision.unwrap()),
            "a revision handed out twice"
        );
    }
    assert_eq!(revisions.len(), 15);

    // Exactly one leader.
    let deadline = Instant::now() + LEASE * 3;
    let leader = loop {
        let now_leading = leaders(&[&a, &b, &c]).await;
        if now_leading.len() == 1 {
            break now_leading[0];
        }
        assert!(
            now_leading.len() <= 1,
            "two leaders at once: {now_leading:?}"
        );
        assert!(
            Instant::now() < deadline,
            "no leader within {:?}",
            LEASE * 3
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("leader: {leader}");

    // Kill A with SIGKILL in the middle of a stream of writes to it.
    let client = a.admin_client();
    let stream = tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        for i in 0..200u16 {
            match tokio::time::timeout(
                Duration::from_secs(5),
                try_put_policy(&client, &policy_with_port(5000 + i)),
            )
            .await
            {
                Ok(Some((200, Some(revision)))) => {
                    acked.insert((revision, 5000 + i));
                }
                _ => break,
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed_at = Instant::now();
    a.kill();
    let acked = stream.await.unwrap();
    assert!(!acked.is_empty(), "no write landed before the kill");
    // Nothing lost: what A acknowledged is in the API server at once...
    let (last_revision, _) = *acked.iter().next_back().unwrap();
    let policies: Api<palisade_gateway::crd::Policy> =
        Api::namespaced(cluster.client().await, "team-a");
    let stored = policies.get("web").await.unwrap();
    let stamp = &stored.metadata.annotations.as_ref().unwrap()["palisade.dev/accepted"];
    let stored_revision: u64 = stamp.split('/').next().unwrap().parse().unwrap();
    assert!(
        stored_revision >= last_revision,
        "{stamp} < {last_revision}"
    );
    // ... and nothing half-written: B serves a whole, valid policy at least
    // that new once its watch delivers it (milliseconds; bound: 2 s).
    let deadline = Instant::now() + Duration::from_secs(2);
    let served = loop {
        let served = get(&b.admin_client(), "/v1/policies/web").await;
        assert_eq!(served.status, 200, "{:?}", served.body);
        let served = served.json().unwrap();
        if served["revision"].as_u64().unwrap() >= last_revision {
            break served;
        }
        assert!(
            Instant::now() < deadline,
            "B still serves {served} after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let document = served["document"].as_str().unwrap();
    palisade_policy::parse_policy(document.as_bytes()).expect("a whole policy");

    // A survivor holds the Lease within its duration (plus one renewal
    // period), and it sweeps: a bootstrap Secret of a sandbox that does not
    // exist goes.
    let orphan = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("palisade-bootstrap-{}", "0f".repeat(32))),
            labels: Some(
                [(
                    "palisade.dev/sandbox".to_owned(),
                    "sbx-0123456789abcdef0123456789abcdef".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("palisade.dev/bootstrap".into()),
        data: Some(
            [
                (
                    "sandboxId".to_owned(),
                    k8s_openapi::ByteString(b"sbx-0123456789abcdef0123456789abcdef".to_vec()),
                ),
                (
                    "expiresAt".to_owned(),
                    k8s_openapi::ByteString(b"99999999999".to_vec()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(cluster.client().await, STORE_NS);
    secrets.create(&Default::default(), &orphan).await.unwrap();
    let deadline = killed_at + LEASE + LEASE / 3 + Duration::from_secs(2);
    let new_leader = loop {
        let now_leading = leaders(&[&b, &c]).await;
        assert!(now_leading.len() <= 1, "two leaders: {now_leading:?}");
        if let [one] = now_leading[..] {
            break one;
        }
        assert!(
            Instant::now() < deadline,
            "no survivor took the Lease in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{new_leader} leads {:?} after the SIGKILL",
        killed_at.elapsed()
    );
    let deadline = Instant::now() + LEASE * 3;
    while secrets
        .get_opt(orphan.metadata.name.as_deref().unwrap())
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the leader did not collect the orphan"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sandbox and its token still work on the survivors.
    let again = post(&c.client(Some(&new_jwt)), "/v1/token:refresh").await;
    assert_eq!(again.status, 200, "{:?}", again.body);
}
