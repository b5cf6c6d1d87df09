//! What every driver implements ([`Driver`]) and what the sandbox handlers
//! hand it ([`Launch`]) and get back ([`LogChunk`], [`DriverError`]).
//!
//! Must never: carry the bootstrap token anywhere but [`Launch`] (whose
//! `Debug` redacts it).

use std::fmt::Debug;

use palisade_api::Sandbox;

use crate::principal::SandboxId;

/// Why a driver operation failed; the text tells the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Failed(String),
    #[error("this sandbox has no runtime on the {0} driver")]
    NotRunning(&'static str),
}

impl DriverError {
    pub fn failed(msg: impl Into<String>) -> Self {
        DriverError::Failed(msg.into())
    }
}

/// What a driver needs to start one sandbox.
pub struct Launch<'a> {
    pub sandbox: &'a Sandbox,
    /// The one-time bootstrap token; handed to the sidecar only (0600 file).
    pub bootstrap_token: &'a str,
    /// The sandbox policy's YAML text (for drivers that pass it as a file).
    pub policy: Option<&'a str>,
}

impl Debug for Launch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("sandbox", &self.sandbox.id)
            .field("bootstrap_token", &"<redacted>")
            .finish()
    }
}

/// A slice of a sandbox's log, from a byte offset on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub text: Vec<u8>,
    /// Offset to ask for next time.
    pub next: u64,
    /// `Some` once the agent (the shim) has exited: how it ended.
    pub agent_exit: Option<String>,
}

/// A sandbox lifecycle driver. Calls block (they run commands); handlers
/// call them from `spawn_blocking`.
pub trait Driver: Send + Sync + Debug + 'static {
    /// Short name for messages (`local`).
    fn name(&self) -> &'static str;
    /// Start the sandbox's runtime. On error nothing of it is left running.
    fn create(&self, launch: &Launch<'_>) -> Result<(), DriverError>;
    /// Stop and remove everything the runtime of `id` consists of.
    fn delete(&self, id: &SandboxId) -> Result<(), DriverError>;
    /// Log lines of the sandbox's processes from byte offset `after` on.
    fn logs(&self, id: &SandboxId, after: u64) -> Result<LogChunk, DriverError>;
    /// Tear down every sandbox runtime and shared resource (gateway shutdown).
    fn shutdown(&self);
    /// The URL sidecars reach the gateway at, known once the listener is bound.
    fn set_gateway_url(&self, _url: String) {}
}
