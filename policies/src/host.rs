//! Host names: the syntax of policy host patterns and the one normal form the
//! matcher compares (lower-case ASCII, IDNA punycode, no trailing dot, IP
//! literals in canonical text form).
//!
//! Owns: [`parse_pattern`] (policy side, may allocate, runs at validation and
//! compile time) and [`with_lookup_key`] (connection side, on the hot path).
//!
//! Must never: allocate in [`with_lookup_key`] for ASCII input.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::addr::{self, AddrClass};

/// Longest DNS name (without the trailing dot).
pub const MAX_HOST_LEN: usize = 253;
/// Longest DNS label.
pub const MAX_LABEL_LEN: usize = 63;

/// A normalised policy host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.github.com` (normalised).
    Exact(String),
    /// `*.githubusercontent.com`; holds the parent (`githubusercontent.com`).
    Wildcard(String),
    /// An IP literal (`198.18.0.7`, `2001:db8::7`), in canonical text form.
    Ip(IpAddr),
}

impl HostPattern {
    /// The normalised pattern as written back (`*.example.com`, `2001:db8::1`).
    pub fn to_pattern_string(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(parent) => format!("*.{parent}"),
            HostPattern::Ip(ip) => ip.to_string(),
        }
    }
}

/// Parse and normalise one policy host. The error is a complete sentence for
/// the operator (the caller adds the field path).
pub fn parse_pattern(raw: &str) -> Result<HostPattern, String> {
    if raw.is_empty() {
        return Err("empty host; write a DNS name such as `api.example.com`".to_owned());
    }
    if raw.trim() != raw || raw.chars().any(char::is_whitespace) {
        return Err(format!("host `{raw}` contains whitespace"));
    }
    let unbracketed = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return match addr::classify(ip) {
            AddrClass::Forbidden(why) => Err(format!(
                "host `{raw}` is a {why} address, which is never dialled; remove it"
            )),
            _ => Ok(HostPattern::Ip(addr::canonical(ip))),
        };
    }
    let host = raw.strip_suffix('.').unwrap_or(raw);
    if host == "*" {
        return Err(format!(
            "host `{raw}` would match every name; list the hosts, or `*.` plus a domain \
             (`*.example.com`)"
        ));
    }
    if let Some(parent) = host.strip_prefix("*.") {
        if parent.contains('*') {
            return Err(wildcard_position(raw));
        }
        let parent = normalise_name(raw, parent)?;
        if !parent.contains('.') {
            return Err(format!(
                "host `{raw}` is a wildcard over the top-level domain `{parent}`, which \
                 matches far too much; name at least two labels after `*.` \
                 (`*.example.{parent}`)"
            ));
        }
        return Ok(HostPattern::Wildcard(parent));
    }
    if host.contains('*') {
        return Err(wildcard_position(raw));
    }
    normalise_name(raw, host).map(HostPattern::Exact)
}

fn wildcard_position(raw: &str) -> String {
    format!(
        "host `{raw}` has a wildcard that is not the whole first label; `*` may only \
         appear as `*.` at the start (`*.example.com`)"
    )
}

/// IDNA-convert and check a DNS name (no wildcard, no trailing dot).
fn normalise_name(raw: &str, name: &str) -> Result<String, String> {
    let ascii = if name.is_ascii()
        && !name
            .split('.')
            .any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case("xn--"))
    {
        name.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_cow(name.as_bytes(), idna::AsciiDenyList::URL)
            .map_err(|_| {
                format!(
                    "host `{raw}` is not a valid internationalised domain name (IDNA); \
                     write it in Unicode or in its punycode (`xn--`) form"
                )
            })?
            .into_owned()
    };
    check_ldh(raw, &ascii)?;
    Ok(ascii)
}

/// Letters, digits, `-` and `_`; labels 1–63 bytes not starting or ending with
/// `-`; at most 253 bytes; last label not all digits.
fn check_ldh(raw: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_HOST_LEN {
        return Err(format!(
            "host `{raw}` is {} bytes long; DNS names have at most {MAX_HOST_LEN}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "host `{raw}` has an empty label (`..` or a leading dot)"
            ));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "host `{raw}` has a label of {} bytes; DNS labels have at most {MAX_LABEL_LEN}",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "host `{raw}` contains `{bad}`; host names may only use letters, digits, \
                 `-` and `_` (and Unicode, which is converted to punycode)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "host `{raw}` has a label starting or ending with `-`"
            ));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "host `{raw}` ends in an all-numeric label; write an IP address in full \
             (`192.0.2.7`) or a DNS name"
        ));
    }
    Ok(())
}

/// Stack buffer used to build lookup keys without allocating.
struct StackBuf {
    buf: [u8; MAX_HOST_LEN + 3],
    len: usize,
}

impl StackBuf {
    fn new() -> Self {
        Self {
            buf: [0; MAX_HOST_LEN + 3],
            len: 0,
        }
    }
    fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.buf[..self.len]).ok()
    }
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(std::fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Call `f` with the normal form of a host as a connection presents it (SNI,
/// `Host`, CONNECT authority without port, or an address literal). Returns
/// `None` — without calling `f` — when the input cannot be a host at all.
///
/// ASCII input is lower-cased into a stack buffer; only non-ASCII (Unicode)
/// input is IDNA-converted, which allocates.
pub fn with_lookup_key<R>(host: &str, f: impl FnOnce(&str) -> R) -> Option<R> {
    if !host.is_ascii() {
        let ascii = idna::domain_to_ascii_cow(host.as_bytes(), idna::AsciiDenyList::URL).ok()?;
        if !ascii.is_ascii() {
            return None;
        }
        return with_lookup_key(&ascii, f);
    }
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // Only something ending in a digit or containing `:` can be an address.
    let maybe_ip = unbracketed.contains(':')
        || unbracketed
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_digit());
    if maybe_ip && let Ok(ip) = unbracketed.parse::<IpAddr>() {
        let mut buf = StackBuf::new();
        write!(buf, "{}", addr::canonical(ip)).ok()?;
        return buf.as_str().map(f);
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    let mut buf = StackBuf::new();
    for (dst, src) in buf.buf.iter_mut().zip(name.bytes()) {
        *dst = src.to_ascii_lowercase();
    }
    buf.len = name.len();
    buf.as_str().map(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(h: &str) -> Option<String> {
        with_lookup_key(h, str::to_owned)
    }

    #[test]
    fn patterns_normalise() {
        assert_eq!(
            parse_pattern("API.GitHub.com."),
            Ok(HostPattern::Exact("api.github.com".into()))
        );
        assert_eq!(
            parse_pattern("*.Example.COM"),
            Ok(HostPattern::Wildcard("example.com".into()))
        );
        assert_eq!(
            parse_pattern("bücher.example"),
            Ok(HostPattern::Exact("xn--bcher-kva.example".into()))
        );
        assert_eq!(
            parse_pattern("*.bücher.example"),
            Ok(HostPattern::Wildcard("xn--bcher-kva.example".into()))
        );
        assert_eq!(
            parse_pattern("XN--BCHER-KVA.example"),
            Ok(HostPattern::Exact("xn--bcher-kva.example".into()))
        );
        assert_eq!(
            parse_pattern("198.18.0.7"),
            Ok(HostPattern::Ip("198.18.0.7".parse().unwrap()))
        );
        assert_eq!(
            parse_pattern("[2001:DB8::7]"),
            Ok(HostPattern::Ip("2001:db8::7".parse().unwrap()))
        );
        assert_eq!(
            parse_pattern("redis"),
            Ok(HostPattern::Exact("redis".into()))
        );
        assert_eq!(
            parse_pattern("my_bucket.s3.amazonaws.com"),
            Ok(HostPattern::Exact("my_bucket.s3.amazonaws.com".into()))
        );
    }

    #[test]
    fn patterns_rejected() {
        for (h, needle) in [
            ("*", "every name"),
            ("*.com", "top-level domain"),
            ("*.com.", "top-level domain"),
            ("a.*.com", "not the whole first label"),
            ("*foo.com", "not the whole first label"),
            ("foo*.com", "not the whole first label"),
            ("*.*.example.com", "not the whole first label"),
            ("**.example.com", "not the whole first label"),
            ("", "empty host"),
            ("a..b", "empty label"),
            (".a.b", "empty label"),
            ("exa mple.com", "whitespace"),
            ("-a.example.com", "starting or ending"),
            ("a-.example.com", "starting or ending"),
            ("ex!ample.com", "contains `!`"),
            ("example.com/path", "contains `/`"),
            ("1.2.3", "all-numeric"),
            ("127.0.0.1", "never dialled"),
            ("::1", "never dialled"),
            ("169.254.169.254", "never dialled"),
            ("xn--zz.example", "IDNA"),
        ] {
            let err = parse_pattern(h).unwrap_err();
            assert!(err.contains(needle), "{h}: {err}");
        }
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert!(
            parse_pattern(&long_label)
                .unwrap_err()
                .contains("label of 64")
        );
        let long = format!("{}.com", "a.".repeat(130));
        assert!(parse_pattern(&long).unwrap_err().contains("at most 253"));
    }

    #[test]
    fn lookup_keys() {
        assert_eq!(key("API.GitHub.COM.").as_deref(), Some("api.github.com"));
        assert_eq!(
            key("bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            key("BÜCHER.example.").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(key("[2001:DB8:0::7]").as_deref(), Some("2001:db8::7"));
        assert_eq!(key("::ffff:198.18.0.1").as_deref(), Some("198.18.0.1"));
        assert_eq!(key(""), None);
        assert_eq!(key("."), None);
        assert_eq!(key(&"a".repeat(300)), None);
    }
}
