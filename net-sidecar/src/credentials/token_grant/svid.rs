//! JWT-SVIDs from the SPIFFE Workload API (the SPIRE agent's unix socket). One connection per
//! fetch: fetches only happen on a token cache miss, and a fresh connection survives agent
//! restarts without reconnect logic.

use spiffe::WorkloadApiClient;

use super::oauth::{GrantError, sanitize};

/// The SVID token for `audience`. The error names the socket, never a token.
pub(super) async fn fetch(socket: &str, audience: &str) -> Result<String, GrantError> {
    let endpoint = if socket.starts_with("unix:") {
        socket.to_owned()
    } else {
        format!("unix:{socket}")
    };
    let fail = |what: &str, err: &dyn std::fmt::Display| {
        GrantError::new(
            "svid",
            format!(
                "cannot {what} a JWT-SVID from the SPIFFE Workload API at {socket}: {}; check \
                 that the SPIRE agent socket is mounted into the sidecar and this workload is \
                 registered",
                sanitize(&err.to_string(), 200, None)
            ),
        )
    };
    let client = WorkloadApiClient::connect_to(&endpoint)
        .await
        .map_err(|e| fail("connect to fetch", &e))?;
    let svid = client
        .fetch_jwt_svid([audience], None)
        .await
        .map_err(|e| fail("fetch", &e))?;
    Ok(svid.token().to_owned())
}
