//! What a gateway on the Kubernetes store ([`KubeStore`]) does besides
//! serving: connect to the API server, and follow what the other replicas
//! (and `kubectl`) change.
//!
//! * A policy or secret changed anywhere wakes this replica's sidecar
//!   sessions and policy long-polls, as a local write does; a sandbox
//!   deleted anywhere ends its sessions here.
//! * One replica, the holder of the `palisade-gateway` Lease
//!   ([`super::lease`]), sweeps garbage: expired bootstrap tokens and those
//!   of sandboxes that no longer exist.
//! * `Policy` objects applied with `kubectl` are validated like
//!   `PUT /v1/policies` and accepted or rejected (their `status` says which).
//!
//! Must never: serve before the store's caches are primed ([`KubeStore::connect`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::sessions::credentials;
use crate::state::AppState;
use crate::store::kube_store::KubeStore;

/// How long start-up waits for the first list of every watched kind.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A kube client from `kube_config` (`None`: in-cluster).
pub async fn client(kube_config: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kube_config {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).with_context(|| {
                format!(
                    "cannot read kubeconfig {} (--kube-config); point it at a valid kubeconfig",
                    path.display()
                )
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::incluster()
            .context("no --kube-config and not in a pod (in-cluster configuration unavailable)")?,
    };
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}

/// Connect the store: watches started and primed.
pub async fn open(kube_config: Option<&Path>, namespace: &str) -> anyhow::Result<Arc<KubeStore>> {
    let client = client(kube_config).await?;
    let store = KubeStore::connect(client, namespace, CONNECT_TIMEOUT).await?;
    tracing::info!(namespace, "Kubernetes store connected");
    Ok(Arc::new(store))
}

/// This replica's name in the Lease: `$POD_NAME` (else the host name) and
/// a random suffix, so a restarted process is a new candidate.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "palisade".to_owned());
    format!("{base}-{:08x}", rand::random::<u32>())
}

/// While this replica holds the Lease: sweep garbage every `period`.
pub async fn collect_garbage(
    store: Arc<KubeStore>,
    mut leader: watch::Receiver<bool>,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = leader.changed() => {}
            _ = shutdown.changed() => return,
        }
        if !*leader.borrow() {
            continue;
        }
        match store.collect_garbage(crate::fsutil::now()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "garbage collected"),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

/// Follow changes made by other replicas until `shutdown`.
pub async fn follow(
    state: Arc<AppState>,
    store: Arc<KubeStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut policies = store.policy_changes();
    let mut secrets = store.secret_changes();
    let mut sandboxes = store.sandbox_changes();
    let mut live = store.cached_sandbox_ids();
    reconcile(&state, &store).await;
    loop {
        tokio::select! {
            changed = sandboxes.changed() => {
                if changed.is_err() { return; }
                // Deleted on any replica: its sidecar sessions here end now.
                let now_live = store.cached_sandbox_ids();
                for gone in live.difference(&now_live) {
                    state.sessions.end_sandbox(gone);
                }
                live = now_live;
            }
            changed = policies.changed() => {
                if changed.is_err() { return; }
                state.policy_revision.send_replace(store.policy_revision());
                reconcile(&state, &store).await;
            }
            changed = secrets.changed() => {
                if changed.is_err() { return; }
                state.sessions.secrets_changed(store.secret_revision());
                reconcile(&state, &store).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn reconcile(state: &AppState, store: &KubeStore) {
    let check = |policy: &palisade_policy::Policy, namespace: Option<&str>| -> Vec<String> {
        let mut problems: Vec<String> = credentials::local_only_sources(policy)
            .into_iter()
            .map(|(path, message)| format!("{path}: {message}"))
            .collect();
        match credentials::check_policy(policy, namespace, store) {
            Ok(refusals) => problems.extend(
                refusals
                    .into_iter()
                    .map(|(path, refusal)| format!("{path}: {refusal}")),
            ),
            Err(e) => problems.push(format!("cannot check its secrets: {e}")),
        }
        problems
    };
    match store.reconcile_policies(&check).await {
        Ok(0) => {}
        Ok(accepted) => {
            tracing::info!(accepted, "policies applied with kubectl accepted");
            state.policy_revision.send_replace(store.policy_revision());
        }
        Err(e) => tracing::warn!(error = %e, "cannot reconcile Policy objects"),
    }
}
