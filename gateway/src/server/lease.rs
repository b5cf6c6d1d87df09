//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` does it: read the Lease, take it when it is free or its
//! holder stopped renewing for `leaseDurationSeconds`, renew it every third
//! of that, each write a replace conditioned on the `resourceVersion` read.
//! Of replicas racing for it exactly one write succeeds.
//!
//! This replica counts itself leader only between a successful write and the
//! next failed one (a failed renewal ends leadership at once, before the
//! Lease could expire for the others), and vacates the Lease on shutdown so
//! another replica takes over without waiting for it to expire.
//!
//! Must never: call itself leader without having written the Lease within
//! its duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

/// Name of the gateway's Lease.
pub const LEASE_NAME: &str = "palisade-gateway";

/// One replica's side of the election.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    identity: String,
    duration: Duration,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    pub fn new(client: Client, namespace: &str, identity: String, duration: Duration) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            identity,
            duration,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Take or renew the Lease once; whether this replica holds it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let seconds = i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if !mine && holder.is_some() && !expired(spec) {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it since we read it: theirs this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up if this replica holds it.
    pub async fn vacate(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Run the election until `shutdown`, publishing leadership on `leader`.
    pub async fn run(self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let period = (self.duration / 3).max(Duration::from_millis(200));
        loop {
            let holds = match self.try_acquire_or_renew().await {
                Ok(holds) => holds,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take or renew the gateway Lease");
                    false
                }
            };
            leader.send_if_modified(|current| {
                if *current != holds {
                    tracing::info!(identity = %self.identity, leader = holds, "gateway leadership changed");
                    *current = holds;
                    true
                } else {
                    false
                }
            });
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => break,
            }
        }
        leader.send_replace(false);
        if let Err(e) = self.vacate().await {
            tracing::warn!(error = %e, "cannot vacate the gateway Lease");
        }
    }
}

/// Whether the holder stopped renewing longer ago than the Lease's duration.
fn expired(spec: &LeaseSpec) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0)) * 1000;
    let age_ms = Timestamp::now().as_millisecond() - renewed.0.as_millisecond();
    age_ms > duration_ms
}
