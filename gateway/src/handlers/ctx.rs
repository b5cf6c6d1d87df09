//! [`Ctx`]: what every handler gets — the shared state, the authenticated
//! [`Principal`] and the [`Matched`] route — and its store helper.
//!
//! Must never: expose the request's credential (handlers see the principal).

use std::sync::Arc;

use crate::http::{ApiError, Response};
use crate::principal::Principal;
use crate::routes::Matched;
use crate::state::AppState;
use crate::store::{Store, StoreError};

/// What a handler gets.
#[derive(Debug)]
pub struct Ctx {
    pub state: Arc<AppState>,
    pub principal: Principal,
    pub matched: Matched,
}

pub type HandlerResult = Result<Response, ApiError>;

impl Ctx {
    /// Run a store operation off the async threads; count and explain failures.
    pub async fn store<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.state.store.clone();
        let result = tokio::task::spawn_blocking(move || f(store.as_ref())).await;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.state.metrics.store_errors.inc();
                tracing::error!(error = %e, "store operation failed");
                Err(ApiError::unavailable(
                    "the gateway store failed; retry, and see the gateway log",
                ))
            }
            Err(_) => {
                self.state.metrics.store_errors.inc();
                Err(ApiError::internal("store task panicked"))
            }
        }
    }
}
