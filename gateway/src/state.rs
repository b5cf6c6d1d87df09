//! Everything a request may need, built once at start-up and shared.
//!
//! Only the router and the handlers hold the whole [`AppState`]; each layer
//! and background part gets its own piece (the authentication chain its
//! [`Authenticators`], a session stream its sources, the driver its config).

use std::sync::Arc;

use crate::authn::Authenticators;
use crate::config::Config;
use crate::driver::Driver;
use crate::metrics::Metrics;
use crate::sessions::SessionHub;
use crate::store::Store;
use crate::tokens::TokenService;

#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub tokens: TokenService,
    pub metrics: Metrics,
    /// The authentication chain (admin token, bootstrap, Kubernetes, OIDC,
    /// sandbox JWTs), shared with the authentication layer.
    pub authn: Arc<Authenticators>,
    /// The latest policy revision written; long-polls and session streams wait on it.
    pub policy_revision: tokio::sync::watch::Sender<u64>,
    /// Live sidecar sessions and exec relays.
    pub sessions: SessionHub,
    /// Sandbox lifecycle driver (`palisade up`: the local driver); `None`:
    /// sandboxes are only registered.
    pub driver: Option<Arc<dyn Driver>>,
}
