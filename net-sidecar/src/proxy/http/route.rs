//! Routing a request: which host and port it is for, checked against the connection it
//! came on.
//!
//! Owns: parsing `host[:port]` authorities (request target and `Host`, with the same
//! normalisation as SNI), the agreement of request target and `Host`, the port of a
//! transparent connection, absolute form on the explicit proxy, and framing that another
//! HTTP implementation could read differently (HTTP/2's equivalent of [`super::head`]'s
//! checks). Also which requests ask to switch protocols.
//! Must never: accept a request whose host is ambiguous (several `Host` headers, target and
//! `Host` disagreeing, credentials in the target) — it is refused before any decision.

use std::net::IpAddr;

use http::header;
use http::{Request, StatusCode, Version};
use hyper::body::Incoming;

use super::head::Problem;
use crate::admin::metrics::BadInput;
use crate::proxy::decide::{Refusal, Target};
use crate::proxy::peek::normalize_host;

const MULTIPLE_HOSTS: &str = "more than one Host header";

/// Host and port this request is for, on a connection whose requests may go to `target`.
/// A request that cannot be routed is refused (400), with `Connection: close` when what
/// follows it cannot be trusted (its framing, or which `Host` it has).
pub fn route(target: &Target, req: &Request<Incoming>) -> Result<(String, u16), Refusal> {
    if let Some(problem) = framing_problem(req) {
        return Err(Refusal::BadRequest {
            kind: Some(problem.kind()),
            status: StatusCode::BAD_REQUEST,
            why: problem.message().into(),
            close: true,
        });
    }
    authority(target, req).map_err(|why| {
        let multiple = why == MULTIPLE_HOSTS;
        Refusal::BadRequest {
            kind: Some(if multiple {
                BadInput::MultipleHost
            } else {
                BadInput::MalformedHttp
            }),
            status: StatusCode::BAD_REQUEST,
            why: why.into(),
            close: multiple,
        }
    })
}

/// Host and port this request is for, checked against the connection's target.
fn authority(target: &Target, req: &Request<Incoming>) -> Result<(String, u16), &'static str> {
    let uri = req.uri();
    if matches!(target, Target::Absolute) {
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => {
                return Err(
                    "only http:// URLs are proxied in absolute form; use CONNECT for https",
                );
            }
            None => {
                return Err(
                    "the explicit proxy needs an absolute URL (GET http://host/path) or CONNECT",
                );
            }
        }
    }
    let default_port = match target {
        Target::Original(dst) => dst.port(),
        Target::Inspected(conn) => conn.port,
        Target::Tunnel { port, .. } => *port,
        Target::Absolute => 80,
    };
    let from_uri = uri
        .authority()
        .map(|a| parse_authority(a.as_str()))
        .transpose()?;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let from_header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(v), None) => Some(parse_authority(
            v.to_str().map_err(|_| "the Host header is not ASCII")?,
        )?),
        (Some(_), Some(_)) => return Err(MULTIPLE_HOSTS),
    };
    let with_port = |(h, p): (String, Option<u16>)| (h, p.unwrap_or(default_port));
    let (host, port) = match (from_uri.map(with_port), from_header.map(with_port)) {
        (Some(u), Some(h)) if u != h => {
            return Err("the Host header does not match the request target");
        }
        (Some(u), _) => u,
        (None, Some(h)) => h,
        (None, None) => return Err("missing Host header"),
    };
    if let Target::Original(dst) = target
        && port != dst.port()
    {
        return Err("the Host header names another port than the connection's destination");
    }
    Ok((host, port))
}

/// Refuse requests whose framing could be read differently by another HTTP implementation
/// (request smuggling): both Content-Length and Transfer-Encoding, or several Content-Length.
/// HTTP/1 heads never get here like that ([`super::head`] refused them on the raw bytes); this is
/// the same rule for what HTTP/2 hands over.
fn framing_problem(req: &Request<Incoming>) -> Option<Problem> {
    let h = req.headers();
    let cl = h.get_all(header::CONTENT_LENGTH).iter().count();
    if cl > 0 && h.contains_key(header::TRANSFER_ENCODING) {
        return Some(Problem::ClAndTe);
    }
    if cl > 1 {
        return Some(Problem::DuplicateContentLength);
    }
    None
}

/// Whether an HTTP/1 request asks to switch protocols; unless the answer is 101, its
/// connection is closed after the answer ([`super::head`] stops checking after such a
/// request).
pub fn switch_requested(req: &Request<Incoming>) -> bool {
    req.version() <= Version::HTTP_11
        && (req.method() == http::Method::CONNECT || req.headers().contains_key(header::UPGRADE))
}

/// `host[:port]` → normalised host (name or IP literal without brackets) and port.
pub fn parse_authority(raw: &str) -> Result<(String, Option<u16>), &'static str> {
    const BAD: &str = "the request target or Host header is not a valid host[:port]";
    if raw.contains('@') {
        return Err("credentials in the request target are not allowed");
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(BAD)?;
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| BAD)?;
        (IpAddr::V6(ip).to_string(), after)
    } else {
        match raw.split_once(':') {
            Some((host, _)) => (
                normalize_host(host.as_bytes()).ok_or(BAD)?,
                &raw[host.len()..],
            ),
            None => (normalize_host(raw.as_bytes()).ok_or(BAD)?, ""),
        }
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        None => return Err(BAD),
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| BAD)?)
        }
        Some(_) => return Err(BAD),
    };
    Ok((host, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            parse_authority("Allowed.Test"),
            Ok(("allowed.test".into(), None))
        );
        assert_eq!(
            parse_authority("allowed.test.:8080"),
            Ok(("allowed.test".into(), Some(8080)))
        );
        assert_eq!(
            parse_authority("[2001:DB8::1]:443"),
            Ok(("2001:db8::1".into(), Some(443)))
        );
        assert_eq!(
            parse_authority("198.18.0.1"),
            Ok(("198.18.0.1".into(), None))
        );
        for bad in [
            "user:pw@allowed.test",
            "a b",
            "allowed.test:",
            "allowed.test:99999",
            "",
            "a/b",
            "[zz]:1",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad}");
        }
    }
}
