//! The live policy and where it comes from: `--policy FILE` (loaded at start and
//! hot-reloaded), or the gateway session (`--gateway`: each `Policy` event is handed over
//! as a [`PolicyUpdate`] on the [`super::feed`]).
//!
//! Owns: reading (bounded by [`MAX_POLICY_BYTES`]), parsing, validating and compiling the
//! file or the delivered text; publishing each new generation on a `watch` channel (new
//! connections see it, open ones keep theirs); the generation gauge and the reload-failure
//! counter. Both feeds share the same rule: a broken policy is refused and the last good one
//! stays; there is never an empty or placeholder policy (the gateway feed does not return
//! from start-up until the first valid policy arrived).
//! The file is polled once per [`POLL_INTERVAL`] and compared byte for byte, which is robust
//! to editors' write-to-temp-and-rename, to ConfigMap `..data` symlink swaps, and to
//! filesystems without inotify.
//! A policy delivered by the gateway may not use the `file` or `env` credential sources (they
//! read the sidecar's own files and environment, which only a locally loaded `--policy` may
//! name): such a policy is refused like a broken one — the gateway refuses to store it, and
//! this is the second line of defence.
//! Must never: replace a good policy with a broken one, crash because the file vanished, or
//! accept a `file`/`env` credential from the gateway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use palisade_policy::model::CredentialSource;
use palisade_policy::{CompiledPolicy, MAX_POLICY_BYTES, Policy, parse_policy};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::{PolicyUpdate, UpdateReceiver};
use crate::admin::Metrics;

/// How often the policy file is re-read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Read the file, refusing anything over the size limit.
async fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than the {MAX_POLICY_BYTES}-byte limit"
        )));
    }
    Ok(bytes)
}

/// Parse, validate and compile, with an operator-facing error listing every problem.
fn compile(path: &Path, bytes: &[u8]) -> anyhow::Result<CompiledPolicy> {
    compile_named(&path.display().to_string(), bytes)
}

fn compile_named(what: &str, bytes: &[u8]) -> anyhow::Result<CompiledPolicy> {
    parse_named(what, bytes).map(|policy| CompiledPolicy::compile(&policy))
}

fn parse_named(what: &str, bytes: &[u8]) -> anyhow::Result<Policy> {
    anyhow::ensure!(
        bytes.len() <= MAX_POLICY_BYTES,
        "policy {what} is larger than the {MAX_POLICY_BYTES}-byte limit"
    );
    parse_policy(bytes).map_err(|errors| {
        anyhow::anyhow!(
            "policy {what} is invalid; fix these problems (check it with `palisade policy check FILE`):\n{errors}"
        )
    })
}

/// A policy from the gateway: valid, and without `file`/`env` credential sources.
fn compile_delivered(update: &PolicyUpdate) -> anyhow::Result<CompiledPolicy> {
    let what = format!("revision {} from the gateway", update.revision);
    let policy = parse_named(&what, update.text.as_bytes())?;
    for (name, credential) in &policy.spec.credentials {
        let kind = match credential.from {
            CredentialSource::File(_) => "file",
            CredentialSource::Env(_) => "env",
            _ => continue,
        };
        anyhow::bail!(
            "policy {what} is refused: credential `{name}` uses the `{kind}` source \
             (spec.credentials.{name}.from.{kind}), which reads this sidecar's own {}; only a \
             policy loaded locally with --policy may do that, never one delivered by the gateway",
            if kind == "file" {
                "files"
            } else {
                "environment"
            }
        );
    }
    Ok(CompiledPolicy::compile(&policy))
}

#[derive(Debug)]
enum Feed {
    File {
        path: PathBuf,
        last_bytes: Vec<u8>,
    },
    Gateway {
        updates: UpdateReceiver,
        /// Revision and text last seen (applied or refused), to count each once.
        last: PolicyUpdate,
    },
}

/// The live policy and its source.
#[derive(Debug)]
pub struct PolicySource {
    feed: Feed,
    tx: watch::Sender<Arc<CompiledPolicy>>,
    metrics: Metrics,
}

impl PolicySource {
    /// Load the policy for start-up; any problem is fatal (the sidecar must not run without
    /// a policy).
    pub async fn load(path: PathBuf, metrics: Metrics) -> anyhow::Result<Self> {
        let bytes = read_bounded(&path).await.with_context(|| {
            format!(
                "cannot read policy file {}; mount the policy there or pass --policy",
                path.display()
            )
        })?;
        let policy = compile(&path, &bytes)?;
        tracing::info!(path = %path.display(), policy = policy.name(), generation = 1, "policy loaded");
        metrics.policy_generation.set(1);
        let (tx, _) = watch::channel(Arc::new(policy));
        Ok(Self {
            feed: Feed::File {
                path,
                last_bytes: bytes,
            },
            tx,
            metrics,
        })
    }

    /// Wait for the first valid policy from the gateway (refusing broken ones); fails only
    /// if the session side went away for good.
    pub async fn from_gateway(
        mut updates: UpdateReceiver,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        loop {
            let Some(update) = updates.recv().await else {
                anyhow::bail!("the gateway session ended before it delivered a policy");
            };
            match compile_delivered(&update) {
                Ok(policy) => {
                    tracing::info!(
                        revision = update.revision,
                        policy = policy.name(),
                        generation = 1,
                        "policy received from the gateway"
                    );
                    metrics.policy_generation.set(1);
                    let (tx, _) = watch::channel(Arc::new(policy));
                    return Ok(Self {
                        feed: Feed::Gateway {
                            updates,
                            last: update,
                        },
                        tx,
                        metrics,
                    });
                }
                Err(err) => {
                    metrics.policy_reload_failures.inc();
                    tracing::error!(error = %format!("{err:#}"),
                        "refusing the gateway's policy; still waiting for a valid one (not ready)");
                }
            }
        }
    }

    /// Apply one gateway update: publish it if it is new and valid, else keep the last good.
    fn apply(&mut self, update: PolicyUpdate) {
        let Feed::Gateway { last, .. } = &mut self.feed else {
            return;
        };
        if *last == update {
            return;
        }
        *last = update.clone();
        match compile_delivered(&update) {
            Ok(policy) => {
                let generation = self.metrics.policy_generation.get() + 1;
                tracing::info!(
                    revision = update.revision,
                    policy = policy.name(),
                    generation,
                    "policy updated from the gateway"
                );
                self.tx.send_replace(Arc::new(policy));
                self.metrics.policy_generation.set(generation);
            }
            Err(err) => {
                self.metrics.policy_reload_failures.inc();
                tracing::warn!(error = %format!("{err:#}"),
                    "refusing the gateway's policy; keeping the last good policy");
            }
        }
    }

    /// A receiver of the current and future generations.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CompiledPolicy>> {
        self.tx.subscribe()
    }

    /// Re-read the file once; publish a new generation if its content changed and is valid.
    /// Each distinct broken content is counted and logged once.
    pub async fn poll_once(&mut self) {
        let Feed::File { path, last_bytes } = &mut self.feed else {
            return;
        };
        let bytes = match read_bounded(path).await {
            Ok(bytes) => bytes,
            Err(err) => {
                // Remember "unreadable" as an empty content so the failure is counted once.
                if !last_bytes.is_empty() {
                    last_bytes.clear();
                    self.metrics.policy_reload_failures.inc();
                    tracing::warn!(path = %path.display(), error = %err,
                        "cannot re-read the policy file; keeping the last good policy");
                }
                return;
            }
        };
        if bytes == *last_bytes {
            return;
        }
        *last_bytes = bytes;
        match compile(path, last_bytes) {
            Ok(policy) => {
                let generation = self.metrics.policy_generation.get() + 1;
                tracing::info!(path = %path.display(), policy = policy.name(), generation, "policy reloaded");
                self.tx.send_replace(Arc::new(policy));
                self.metrics.policy_generation.set(generation);
            }
            Err(err) => {
                self.metrics.policy_reload_failures.inc();
                tracing::warn!(error = %format!("{err:#}"), "refusing the changed policy file; keeping the last good policy");
            }
        }
    }

    /// Follow the feed forever (file: poll; gateway: apply each update).
    pub async fn watch(mut self) {
        if matches!(self.feed, Feed::Gateway { .. }) {
            loop {
                let Feed::Gateway { updates, .. } = &mut self.feed else {
                    return;
                };
                let Some(update) = updates.recv().await else {
                    tracing::warn!("the gateway policy feed closed; keeping the last good policy");
                    return;
                };
                self.apply(update);
            }
        }
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.poll_once().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::proxy::decide::tests::POLICY;

    #[tokio::test]
    async fn load_reload_and_keep_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, POLICY).unwrap();
        let metrics = Metrics::new().unwrap();
        let mut source = PolicySource::load(path.clone(), metrics.clone())
            .await
            .unwrap();
        let rx = source.subscribe();
        assert_eq!(metrics.policy_generation.get(), 1);
        assert!(
            rx.borrow()
                .match_connection("allowed.test", 443)
                .0
                .is_allow()
        );

        // Unchanged content: nothing happens.
        source.poll_once().await;
        assert_eq!(metrics.policy_generation.get(), 1);

        // Editor-style replace: write elsewhere, rename over.
        let tmp = dir.path().join(".policy.yaml.swp");
        std::fs::write(&tmp, POLICY.replace("allowed.test", "other.test")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        source.poll_once().await;
        assert_eq!(metrics.policy_generation.get(), 2);
        assert!(
            !rx.borrow()
                .match_connection("allowed.test", 443)
                .0
                .is_allow()
        );
        assert!(rx.borrow().match_connection("other.test", 443).0.is_allow());

        // Broken content: refused once, last good kept.
        std::fs::write(&path, "apiVersion: nope\n").unwrap();
        source.poll_once().await;
        source.poll_once().await;
        assert_eq!(metrics.policy_reload_failures.get(), 1);
        assert_eq!(metrics.policy_generation.get(), 2);
        assert!(rx.borrow().match_connection("other.test", 443).0.is_allow());

        // Vanished file: counted once, last good kept; coming back reloads.
        std::fs::remove_file(&path).unwrap();
        source.poll_once().await;
        source.poll_once().await;
        assert_eq!(metrics.policy_reload_failures.get(), 2);
        std::fs::write(&path, POLICY).unwrap();
        source.poll_once().await;
        assert_eq!(metrics.policy_generation.get(), 3);
        assert!(
            rx.borrow()
                .match_connection("allowed.test", 443)
                .0
                .is_allow()
        );
    }

    #[tokio::test]
    async fn gateway_feed_refuses_bad_policies_and_keeps_the_last_good() {
        let metrics = Metrics::new().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let upd = |revision, text: &str| PolicyUpdate {
            revision,
            text: text.to_owned(),
        };
        // A broken first policy is refused; start-up waits for a valid one.
        tx.send(upd(1, "apiVersion: nope\n")).await.unwrap();
        tx.send(upd(2, POLICY)).await.unwrap();
        let source = PolicySource::from_gateway(rx, metrics.clone())
            .await
            .unwrap();
        assert_eq!(metrics.policy_reload_failures.get(), 1);
        let policy = source.subscribe();
        assert!(
            policy
                .borrow()
                .match_connection("allowed.test", 443)
                .0
                .is_allow()
        );
        tokio::spawn(source.watch());
        let mut seen = policy.clone();
        tx.send(upd(3, &POLICY.replace("allowed.test", "next.test")))
            .await
            .unwrap();
        seen.changed().await.unwrap();
        assert!(
            policy
                .borrow()
                .match_connection("next.test", 443)
                .0
                .is_allow()
        );
        // Broken and oversized updates are refused; the last good stays.
        tx.send(upd(4, "kind: Policy\n")).await.unwrap();
        tx.send(upd(5, &"#".repeat(MAX_POLICY_BYTES + 1)))
            .await
            .unwrap();
        tx.send(upd(6, POLICY)).await.unwrap();
        seen.changed().await.unwrap();
        assert_eq!(metrics.policy_reload_failures.get(), 3);
        assert_eq!(metrics.policy_generation.get(), 3);
        // No policy ever: start-up fails with a reason instead of running without one.
        let (tx, rx) = mpsc::channel(1);
        drop(tx);
        let err = PolicySource::from_gateway(rx, metrics).await.unwrap_err();
        assert!(err.to_string().contains("before it delivered a policy"));
    }

    /// POLICY plus a credential from `source` on the `api` rule.
    fn with_local_source(source: &str) -> String {
        POLICY.replace(
            "      http: {access: read-only}\n",
            &format!(
                "      http: {{access: read-only}}\n      credential: c\n  credentials:\n    c:\n      \
                 from: {source}\n"
            ),
        )
    }

    #[tokio::test]
    async fn gateway_feed_refuses_file_and_env_credential_sources() {
        let file = with_local_source("{file: /var/run/secrets/kubernetes.io/serviceaccount/token}");
        let env = with_local_source("{env: PALISADE_GATEWAY_TOKEN}");
        // Both are fine in a local --policy file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, &file).unwrap();
        let metrics = Metrics::new().unwrap();
        PolicySource::load(path.clone(), metrics.clone())
            .await
            .unwrap();
        std::fs::write(&path, &env).unwrap();
        PolicySource::load(path, metrics).await.unwrap();

        // From the gateway: refused at start-up (still waiting) and as an update.
        let metrics = Metrics::new().unwrap();
        let (tx, rx) = mpsc::channel(8);
        let upd = |revision, text: &str| PolicyUpdate {
            revision,
            text: text.to_owned(),
        };
        tx.send(upd(1, &file)).await.unwrap();
        tx.send(upd(2, &env)).await.unwrap();
        tx.send(upd(3, POLICY)).await.unwrap();
        let source = PolicySource::from_gateway(rx, metrics.clone())
            .await
            .unwrap();
        assert_eq!(metrics.policy_reload_failures.get(), 2);
        let policy = source.subscribe();
        assert!(
            policy.borrow().credentials().is_empty(),
            "revision 3 is live"
        );
        tokio::spawn(source.watch());
        let mut seen = policy.clone();
        tx.send(upd(4, &file)).await.unwrap();
        tx.send(upd(5, &POLICY.replace("allowed.test", "next.test")))
            .await
            .unwrap();
        seen.changed().await.unwrap();
        assert_eq!(
            metrics.policy_reload_failures.get(),
            3,
            "revision 4 refused"
        );
        assert!(
            policy
                .borrow()
                .match_connection("next.test", 443)
                .0
                .is_allow()
        );
        assert!(
            compile_delivered(&upd(6, &env))
                .unwrap_err()
                .to_string()
                .contains("spec.credentials.c.from.env")
        );
    }

    #[tokio::test]
    async fn configmap_symlink_swap_is_seen() {
        // Kubernetes mounts: policy.yaml -> ..data/policy.yaml, ..data -> ..2024_x; an update
        // creates a new timestamped dir and swaps the ..data symlink.
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("..v1");
        let v2 = dir.path().join("..v2");
        std::fs::create_dir(&v1).unwrap();
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v1.join("policy.yaml"), POLICY).unwrap();
        std::fs::write(
            v2.join("policy.yaml"),
            POLICY.replace("allowed.test", "v2.test"),
        )
        .unwrap();
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink("..v1", &data).unwrap();
        let path = dir.path().join("policy.yaml");
        std::os::unix::fs::symlink("..data/policy.yaml", &path).unwrap();
        let metrics = Metrics::new().unwrap();
        let mut source = PolicySource::load(path, metrics.clone()).await.unwrap();
        let rx = source.subscribe();
        let tmp_link = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("..v2", &tmp_link).unwrap();
        std::fs::rename(&tmp_link, &data).unwrap();
        source.poll_once().await;
        assert!(rx.borrow().match_connection("v2.test", 443).0.is_allow());
        assert_eq!(metrics.policy_generation.get(), 2);
    }

    #[tokio::test]
    async fn start_up_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new().unwrap();
        let missing = PolicySource::load(dir.path().join("nope.yaml"), metrics.clone())
            .await
            .unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot read policy file"),
            "{missing:#}"
        );
        let path = dir.path().join("bad.yaml");
        std::fs::write(
            &path,
            "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata: {name: x}\nspec: {}\n",
        )
        .unwrap();
        let invalid = PolicySource::load(path, metrics.clone()).await.unwrap_err();
        assert!(format!("{invalid:#}").contains("is invalid"), "{invalid:#}");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES + 10]).unwrap();
        let err = PolicySource::load(big, metrics).await.unwrap_err();
        assert!(format!("{err:#}").contains("limit"), "{err:#}");
    }
}
