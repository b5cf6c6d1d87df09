//! A strict fake API server with Palisade's CRDs (the checked-in
//! `helm/crds/palisade.dev.yaml`) and the namespaces the tests use, plus
//! kube clients and Kubernetes stores on it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use palisade_fake_apiserver::{Config, FakeApiServer};
use palisade_gateway::store::kube_store::KubeStore;

/// The gateway's own namespace (`--store-namespace`).
pub const STORE_NS: &str = "palisade";

/// A valid policy named `web`.
pub const POLICY: &str = "apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata:
  name: web
spec:
  egress:
    - name: example
      hosts: [example.com]
      ports: [443]
";

/// [`POLICY`] with another port.
pub fn policy_with_port(port: u16) -> String {
    POLICY.replace("[443]", &format!("[{port}]"))
}

const CRDS: &str = include_str!("../../../helm/crds/palisade.dev.yaml");

pub struct FakeCluster {
    pub api: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl FakeCluster {
    pub async fn start() -> FakeCluster {
        let api = FakeApiServer::start_with(Config::default().crd_yaml(CRDS)).await;
        for ns in [STORE_NS, "team-a", "team-b"] {
            api.create_namespace(ns, &[("kubernetes.io/metadata.name", ns)]);
        }
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.write_kubeconfig(dir.path());
        FakeCluster {
            api,
            dir,
            kubeconfig,
        }
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// One more "replica": a store with its own client and caches.
    pub async fn store(&self) -> Arc<KubeStore> {
        Arc::new(
            KubeStore::connect(self.client().await, STORE_NS, Duration::from_secs(10))
                .await
                .unwrap(),
        )
    }

    /// Take the API server away (every connection closed, none accepted)
    /// or bring it back on the same address with the same state.
    pub async fn set_down(&self, down: bool) {
        if down {
            self.api.stop().await;
        } else {
            self.api.restart().await;
        }
    }
}
