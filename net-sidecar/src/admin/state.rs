//! Readiness and drain state: what `/ready` reports and what the listeners watch.
//!
//! Owns: [`State`] — ready once listeners are bound and a policy is loaded (set by the
//! composition root, [`crate::app`]); draining after SIGTERM/SIGINT (accept loops stop,
//! HTTP connections are asked to finish).
//! Must never: report ready before the data plane can enforce policy, or go back from
//! draining to ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Shared process state.
#[derive(Debug, Clone)]
pub struct State {
    ready: Arc<AtomicBool>,
    draining: watch::Sender<bool>,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            draining: watch::Sender::new(false),
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Ready and not draining: what `/ready` reports.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !*self.draining.borrow()
    }

    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once draining has started.
    pub async fn drained(&self) {
        let mut rx = self.draining.subscribe();
        // `wait_for` only fails when the sender is gone, which `self` prevents.
        let _ = rx.wait_for(|d| *d).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_follows_state() {
        let s = State::new();
        assert!(!s.is_ready());
        s.set_ready();
        assert!(s.is_ready());
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.drained().await })
        };
        s.start_draining();
        waiter.await.unwrap();
        assert!(!s.is_ready());
        assert!(s.is_draining());
    }
}
