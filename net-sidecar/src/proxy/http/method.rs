//! Method overrides: the headers and parameters with which many server frameworks
//! (Rails, Laravel, Symfony, Spring's `HiddenHttpMethodFilter`, ASP.NET, Express
//! `method-override`, Google APIs) serve a request as another method than the one sent.
//!
//! Owns: finding every override value a request carries — the [`OVERRIDE_HEADERS`], the
//! [`OVERRIDE_PARAM`] query parameter, and the same parameter in a form body — and checking
//! that each is a method token. The proxy then decides on the real method and every override
//! ([`palisade_policy::CompiledPolicy::match_request_methods`]: deny wins).
//! Must never: drop an override value it could not read (an unreadable one is an error), or
//! parse the query or form differently from the policy's query rules.

use http::HeaderMap;
use http::header::{self, HeaderName};
use palisade_policy::compiled::query_pairs;

/// Headers that carry an overriding method.
pub const OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// The query / form parameter that carries an overriding method.
pub const OVERRIDE_PARAM: &str = "_method";

/// What the agent is told when an override value is not a method.
pub const BAD_OVERRIDE: &str = "a method override (X-HTTP-Method-Override, X-HTTP-Method, \
    X-Method-Override header or _method parameter) is not a valid HTTP method token";

/// Every method the request may be served as besides its real one: each override header
/// value and `_method` query value, as sent and upper-cased (frameworks upper-case it),
/// without repeats. `Err` when a value is not a method token (RFC 9110 `token`).
pub fn overrides(headers: &HeaderMap, query: Option<&str>) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    for name in &OVERRIDE_HEADERS {
        for value in headers.get_all(name) {
            push(&mut out, value.as_bytes())?;
        }
    }
    if let Some(query) = query {
        param_values(&mut out, query)?;
    }
    Ok(out)
}

/// Add the `_method` values of an `application/x-www-form-urlencoded` body.
pub fn form_overrides(out: &mut Vec<String>, body: &[u8]) -> Result<(), &'static str> {
    param_values(out, &String::from_utf8_lossy(body))
}

/// Whether servers read this request's body as a urlencoded form (where `_method` may be):
/// `Content-Type: application/x-www-form-urlencoded` (any parameters, any case) — or a POST
/// without any `Content-Type`, which Rack (Rails) parses as a form too.
pub fn is_form(method: &http::Method, headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter().peekable();
    if types.peek().is_none() {
        return method == http::Method::POST;
    }
    types.any(|v| {
        let media = v
            .as_bytes()
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default();
        media
            .trim_ascii()
            .eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    })
}

fn param_values(out: &mut Vec<String>, params: &str) -> Result<(), &'static str> {
    for (key, value) in query_pairs(params) {
        if key == OVERRIDE_PARAM {
            push(out, value.as_bytes())?;
        }
    }
    Ok(())
}

fn push(out: &mut Vec<String>, value: &[u8]) -> Result<(), &'static str> {
    let method = http::Method::from_bytes(value.trim_ascii()).map_err(|_| BAD_OVERRIDE)?;
    let sent = method.as_str();
    for m in [sent.to_owned(), sent.to_ascii_uppercase()] {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn every_override_header_and_param_is_found() {
        let h = headers(&[
            ("X-HTTP-Method-Override", "DELETE"),
            ("x-http-method", "put"),
            ("X-Method-Override", "PATCH"),
            ("x-method-override", "DELETE"),
        ]);
        assert_eq!(
            overrides(&h, Some("a=1&%5Fmethod=purge&_method=DELETE")).unwrap(),
            ["DELETE", "put", "PUT", "PATCH", "purge", "PURGE"]
        );
        assert!(
            overrides(&HeaderMap::new(), Some("method=DELETE"))
                .unwrap()
                .is_empty()
        );
        assert!(overrides(&HeaderMap::new(), None).unwrap().is_empty());
        let mut out = Vec::new();
        form_overrides(&mut out, b"x=1&_method=delete&y=%ff").unwrap();
        assert_eq!(out, ["delete", "DELETE"]);
    }

    #[test]
    fn values_that_are_not_methods_are_refused() {
        for bad in ["", "GET DELETE", "GET,DELETE", "DEL\"ETE", "(x)"] {
            let mut h = HeaderMap::new();
            h.insert(
                "x-http-method-override",
                HeaderValue::from_str(bad).unwrap(),
            );
            assert_eq!(overrides(&h, None), Err(BAD_OVERRIDE), "{bad:?}");
        }
        for bad in ["_method=", "_method", "_method=GET+DELETE", "_method=%00"] {
            assert_eq!(
                overrides(&HeaderMap::new(), Some(bad)),
                Err(BAD_OVERRIDE),
                "{bad}"
            );
        }
        let mut out = Vec::new();
        assert_eq!(
            form_overrides(&mut out, b"_method=a%20b"),
            Err(BAD_OVERRIDE)
        );
    }

    #[test]
    fn form_bodies() {
        let post = http::Method::POST;
        assert!(is_form(&post, &HeaderMap::new()));
        assert!(!is_form(&http::Method::PUT, &HeaderMap::new()));
        for ct in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
            " application/x-www-form-urlencoded ;x=y",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            assert!(is_form(&http::Method::PUT, &h), "{ct}");
        }
        for ct in [
            "application/json",
            "multipart/form-data; boundary=x",
            "text/plain",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            assert!(!is_form(&post, &h), "{ct}");
        }
    }
}
