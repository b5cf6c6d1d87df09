//! Sandbox lifecycle drivers: what turns a registered sandbox into running
//! processes, and back into nothing.
//!
//! * [`contract`] — the [`Driver`] trait the sandbox handlers call on create
//!   and delete, and the logs route reads from.
//! * [`plan`] — the driver-neutral [`LaunchPlan`] of one sandbox: what runs,
//!   as which UID, with which arguments, environment and files, and how it is
//!   isolated. Drivers only render it (processes, or a pod).
//! * [`local::LocalDriver`] — `palisade up`: as root, one network namespace
//!   per sandbox on a private bridge, `palisade-sidecar init` in it, the
//!   sidecar as UID 1337 and `palisade-shim -- CMD` as UID 1000 with every
//!   capability dropped; not root, a development mode with no namespace.
//!   The Kubernetes driver is a later issue.
//!
//! Must never: log or persist a bootstrap token outside the sidecar's 0600
//! token file, leave a namespace, veth, bridge, `/etc/netns` dir, iptables
//! rule or process behind after delete or shutdown, or kill a process it did
//! not start.

pub mod contract;
pub mod local;
pub mod plan;

pub use contract::{Driver, DriverError, Launch, LogChunk};
pub use local::{LocalDriver, LocalDriverConfig, LocalMode};
pub use plan::{LaunchPlan, PolicySource};

/// The driver its configuration asks for (`None`: sandboxes are only registered).
pub fn build(
    config: Option<&LocalDriverConfig>,
) -> anyhow::Result<Option<std::sync::Arc<dyn Driver>>> {
    let Some(local) = config else {
        return Ok(None);
    };
    let driver =
        LocalDriver::new(local.clone()).map_err(|e| anyhow::anyhow!("local driver: {e}"))?;
    Ok(Some(std::sync::Arc::new(driver)))
}
