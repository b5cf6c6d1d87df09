//! [`AuthFailure`]: how an authenticator says no — which one, a bounded
//! reason label (metrics), the status and a message for the caller.
//!
//! Must never: carry the credential, or a status of 5xx for a bad credential
//! (503 only when the store or an API server, not the caller, failed).

use http::StatusCode;

use crate::http::ApiError;

/// A refusal: which authenticator, a bounded reason label, the answer's
/// status (401 unless said otherwise) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub authenticator: &'static str,
    pub reason: &'static str,
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After` (429 answers).
    pub retry_after: Option<u64>,
}

impl AuthFailure {
    pub(super) fn new(
        authenticator: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let status = if reason == STORE_ERROR {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::UNAUTHORIZED
        };
        Self::with_status(authenticator, reason, status, message)
    }

    pub fn with_status(
        authenticator: &'static str,
        reason: &'static str,
        status: StatusCode,
        message: impl Into<String>,
    ) -> Self {
        Self {
            authenticator,
            reason,
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 429: too many attempts; retry after `seconds`.
    pub fn rate_limited(authenticator: &'static str, reason: &'static str, seconds: u64) -> Self {
        let mut f = Self::with_status(
            authenticator,
            reason,
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many token attempts; retry in {seconds}s"),
        );
        f.retry_after = Some(seconds);
        f
    }

    pub(super) fn into_response(self) -> crate::http::Response {
        let error = match self.status {
            StatusCode::FORBIDDEN => ApiError::forbidden(self.message),
            // Not the caller's fault: 503 so that a sidecar retries instead
            // of throwing its credential away.
            StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable(self.message),
            StatusCode::TOO_MANY_REQUESTS => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", self.message)
            }
            _ => ApiError::unauthenticated(self.message),
        };
        let mut resp = error.into_response();
        if let Some(v) = self
            .retry_after
            .and_then(|s| http::HeaderValue::from_str(&s.to_string()).ok())
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Reason label when the store, not the credential, failed (answered 503).
pub const STORE_ERROR: &str = "store_error";
