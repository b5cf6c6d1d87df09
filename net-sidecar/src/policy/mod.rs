//! The policy in force: its source ([`PolicySource`]: a file or the gateway session), each
//! new generation published on a `watch` channel that connections read, and the feed the
//! gateway session delivers policy documents on ([`feed`]).
//!
//! The feed is owned here, not by the session: [`crate::identity`] publishes into it and
//! the data plane subscribes to what [`PolicySource`] makes of it, so neither imports the
//! other.
//! Must never: replace a good policy with a broken one, run without a policy, or accept a
//! `file`/`env` credential source from the gateway (see [`source`]).

mod source;

use tokio::sync::mpsc;

pub use self::source::PolicySource;

/// A policy document delivered by the gateway session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyUpdate {
    pub revision: u64,
    pub text: String,
}

/// The gateway session's end of the policy feed.
pub type UpdateSender = mpsc::Sender<PolicyUpdate>;
/// The data plane's end of the policy feed ([`PolicySource::from_gateway`]).
pub type UpdateReceiver = mpsc::Receiver<PolicyUpdate>;

/// Policy documents in flight between the session and the policy source; the session waits
/// when the source is this far behind.
const FEED_CAPACITY: usize = 8;

/// A new policy feed.
pub fn feed() -> (UpdateSender, UpdateReceiver) {
    mpsc::channel(FEED_CAPACITY)
}
