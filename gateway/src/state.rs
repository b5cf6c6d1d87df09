//! Everything a request may need, built once at start-up and shared.

use std::sync::Arc;

use crate::authn::admin_token::AdminToken;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tokens::TokenService;

#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub tokens: TokenService,
    pub metrics: Metrics,
    pub admin_token: Option<AdminToken>,
    /// Kubernetes ServiceAccount tokens on `token:issue` (when configured).
    pub kube: Option<crate::authn::kube::KubeAuthenticator>,
    /// OIDC user/platform tokens (when configured).
    pub oidc: Option<crate::authn::oidc::OidcAuthenticator>,
    /// The latest policy revision written; long-polls and session streams wait on it.
    pub policy_revision: tokio::sync::watch::Sender<u64>,
    /// Live sidecar sessions and exec relays.
    pub sessions: crate::sessions::SessionHub,
    /// Sandbox lifecycle driver (`palisade up`: the local driver); `None`:
    /// sandboxes are only registered.
    pub driver: Option<Arc<dyn crate::driver::Driver>>,
}
