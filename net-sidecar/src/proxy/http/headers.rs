//! Header hygiene between the agent and the upstream: hop-by-hop headers (RFC 9110 §7.6.1)
//! and protocol upgrades.
//!
//! Owns: which headers never cross the sidecar (`Connection` and what it names,
//! `Proxy-Authorization`, `TE`, `Upgrade` but WebSocket, `HTTP2-Settings`, …), which
//! end-to-end headers `Connection` may not remove ([`PROTECTED`], the method overrides and
//! an injected credential's header), and the one upgrade that is relayed (WebSocket).
//! Must never: remove a header the decision or the credential injection relied on, or let
//! a protocol switch through after which requests would go undecided (`h2c`).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Uri, Version};

use super::method;

/// The one protocol upgrade the sidecar relays: WebSocket (RFC 6455), whose requests and
/// messages the policy can still reason about (the upgrade request is decided like any GET).
/// Every other `Upgrade` token — `h2c` above all, after which the connection would carry
/// HTTP/2 requests that are never decided — is removed and the request forwarded as a plain
/// request (answered with `Connection: close`, see [`super::route::switch_requested`]).
const RELAYED_UPGRADE: &str = "websocket";

/// `Upgrade: websocket` if this message asks to switch (`Connection: upgrade`) to WebSocket
/// among its `Upgrade` tokens; `None` otherwise (no switch, or only other protocols).
pub fn permitted_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(RELAYED_UPGRADE));
    (asks && websocket).then(|| HeaderValue::from_static(RELAYED_UPGRADE))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// End-to-end headers the decision, the credential injection or the upstream's routing rely
/// on: a `Connection` token naming one of them is ignored (RFC 9110 §7.6.1 lets a proxy
/// drop what `Connection` names; dropping these would make the upstream see another request
/// than the one that was judged, e.g. `Connection: host` leaving it without `Host`).
const PROTECTED: [HeaderName; 5] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::COOKIE,
];

/// Whether `Connection` may not remove this header: [`PROTECTED`], the method-override
/// headers ([`method::OVERRIDE_HEADERS`]) and `keep`.
fn protected(name: &HeaderName, keep: Option<&HeaderName>) -> bool {
    PROTECTED.contains(name) || method::OVERRIDE_HEADERS.contains(name) || Some(name) == keep
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1) and what `Connection` names — except the
/// [`PROTECTED`] headers and `keep` (the injected credential's header) — plus
/// `HTTP2-Settings`; keep a WebSocket upgrade if one is being negotiated.
pub fn strip_hop_by_hop(
    headers: &mut HeaderMap,
    keep_upgrade: Option<&HeaderValue>,
    keep: Option<&HeaderName>,
) {
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|name| !protected(name, keep))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove("http2-settings");
    if let Some(upgrade) = keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade.clone());
    }
}

/// Make the judged request the one the upstream gets: hop-by-hop headers out (a WebSocket
/// `upgrade` kept), the injected credential in — replacing every agent-supplied instance of
/// its header, and the agent's own `Authorization` — `Host` from `:authority`, origin-form
/// target, HTTP/1.1.
pub fn to_upstream<B>(
    req: &mut Request<B>,
    upgrade: Option<&HeaderValue>,
    injection: Option<(HeaderName, HeaderValue)>,
) {
    strip_hop_by_hop(
        req.headers_mut(),
        upgrade,
        injection.as_ref().map(|(name, _)| name),
    );
    if let Some((name, value)) = injection {
        // Every agent-supplied instance goes (HeaderMap names are case-insensitive), and
        // the agent's own Authorization never reaches an upstream that gets a credential.
        req.headers_mut().remove(header::AUTHORIZATION);
        req.headers_mut().remove(&name);
        req.headers_mut().insert(name, value);
    }
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        // HTTP/2 from the agent, HTTP/1.1 upstream: :authority becomes Host.
        req.headers_mut().insert(header::HOST, value);
    }
    if req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
    *req.version_mut() = Version::HTTP_11;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic abc"),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, None, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        let up = permitted_upgrade(&h);
        assert_eq!(up.as_ref().map(|v| v.to_str().unwrap()), Some("websocket"));
        strip_hop_by_hop(&mut h, up.as_ref(), None);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn only_websocket_upgrades_are_kept() {
        let upgrade = |connection: &'static str, upgrade: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
            h.insert(
                "http2-settings",
                HeaderValue::from_static("AAMAAABkAAQAAP__"),
            );
            let up = permitted_upgrade(&h);
            strip_hop_by_hop(&mut h, up.as_ref(), None);
            (up, h)
        };
        for (connection, value) in [
            ("Upgrade, HTTP2-Settings", "h2c"),
            ("upgrade", "H2C"),
            ("upgrade", "h2"),
            ("upgrade", "TLS/1.2"),
            ("upgrade", "echo"),
            // Upgrade without `Connection: upgrade` is no switch at all.
            ("keep-alive", "websocket"),
        ] {
            let (up, h) = upgrade(connection, value);
            assert_eq!(up, None, "{connection} / {value}");
            assert!(h.is_empty(), "{connection} / {value}: {h:?}");
        }
        // h2c offered beside WebSocket: only WebSocket goes upstream.
        let (up, h) = upgrade("upgrade, http2-settings", "h2c, websocket");
        assert_eq!(up.unwrap(), "websocket");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(!h.contains_key("http2-settings"));
    }

    #[test]
    fn connection_cannot_remove_what_the_decision_relies_on() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static(
                "Host, content-length, Content-Type, authorization, cookie, \
                 X-HTTP-Method-Override, x-http-method, x-method-override, x-api-key, x-hop",
            ),
        );
        for (name, value) in [
            ("host", "allowed.test"),
            ("content-length", "2"),
            ("content-type", "text/plain"),
            ("authorization", "Bearer agent"),
            ("cookie", "a=1"),
            ("x-http-method-override", "GET"),
            ("x-http-method", "GET"),
            ("x-method-override", "GET"),
            ("x-api-key", "injected"),
            ("x-hop", "1"),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        let key = HeaderName::from_static("x-api-key");
        strip_hop_by_hop(&mut h, None, Some(&key));
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "authorization",
                "content-length",
                "content-type",
                "cookie",
                "host",
                "x-api-key",
                "x-http-method",
                "x-http-method-override",
                "x-method-override"
            ]
        );
    }
}
