//! Request-level matching inside one egress rule: `deny` rules first, then the
//! `access` preset or the `allow` rules.
//!
//! Owns: method, path and query matching and the labels (`deny[0]`,
//! `allow[1]`, `access:read-only`) that name the deciding sub-rule.
//! Must never: normalise paths (the caller hands over a normalised path), or
//! let an encoding trick slip past a `deny` rule (query keys and values are
//! percent-decoded before comparison; deny methods compare case-insensitively).

use std::borrow::Cow;

use super::glob::{PathGlob, wildcard_match};
use crate::model::{Access, HttpRules, RequestRule};

/// Methods of the `read-only` preset.
pub const READ_ONLY_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS"];
/// Methods of the `read-write` preset.
pub const READ_WRITE_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"];

/// How a request rule is used, which decides how it treats ambiguity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polarity {
    /// A `deny` rule: matches if any reading of the request matches.
    Deny,
    /// An `allow` rule: matches only if every reading of the request matches.
    Allow,
}

#[derive(Debug)]
struct CompiledRequestRule {
    label: Box<str>,
    polarity: Polarity,
    methods: Vec<Box<str>>,
    path: Option<PathGlob>,
    query: Vec<(Box<str>, Box<str>)>,
}

/// The compiled `http` section of one egress rule.
#[derive(Debug)]
pub struct CompiledHttp {
    access: Option<Access>,
    deny: Vec<CompiledRequestRule>,
    allow: Vec<CompiledRequestRule>,
}

/// Outcome of request matching, before it is turned into a [`crate::Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpOutcome<'a> {
    Allowed(&'a str),
    Denied(&'a str),
    NoMatch,
}

impl CompiledHttp {
    pub fn new(rules: &HttpRules) -> Self {
        let compile = |polarity: Polarity, kind: &str, list: &[RequestRule]| {
            list.iter()
                .enumerate()
                .map(|(i, r)| CompiledRequestRule {
                    label: format!("{kind}[{i}]").into(),
                    polarity,
                    methods: r.methods.iter().map(|m| m.as_str().into()).collect(),
                    path: r.path.as_deref().map(PathGlob::new),
                    query: r
                        .query
                        .iter()
                        .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                        .collect(),
                })
                .collect()
        };
        Self {
            access: rules.access,
            deny: compile(Polarity::Deny, "deny", &rules.deny),
            allow: compile(Polarity::Allow, "allow", &rules.allow),
        }
    }

    pub fn decide(&self, method: &str, path: &str, query: Option<&str>) -> HttpOutcome<'_> {
        if let Some(rule) = self.deny.iter().find(|r| r.matches(method, path, query)) {
            return HttpOutcome::Denied(&rule.label);
        }
        if let Some(access) = self.access {
            let allowed = match access {
                Access::ReadOnly => READ_ONLY_METHODS.contains(&method),
                Access::ReadWrite => READ_WRITE_METHODS.contains(&method),
                Access::Full => true,
            };
            return if allowed {
                HttpOutcome::Allowed(access_label(access))
            } else {
                HttpOutcome::NoMatch
            };
        }
        match self.allow.iter().find(|r| r.matches(method, path, query)) {
            Some(rule) => HttpOutcome::Allowed(&rule.label),
            None => HttpOutcome::NoMatch,
        }
    }
}

/// `access:read-only`, `access:read-write`, `access:full`.
pub fn access_label(access: Access) -> &'static str {
    match access {
        Access::ReadOnly => "access:read-only",
        Access::ReadWrite => "access:read-write",
        Access::Full => "access:full",
    }
}

impl CompiledRequestRule {
    fn matches(&self, method: &str, path: &str, query: Option<&str>) -> bool {
        let method_ok = self.methods.is_empty()
            || self.methods.iter().any(|m| match self.polarity {
                Polarity::Deny => m.eq_ignore_ascii_case(method),
                Polarity::Allow => **m == *method,
            });
        method_ok
            && self.path.as_ref().is_none_or(|g| g.matches(path))
            && self
                .query
                .iter()
                .all(|(k, v)| self.query_param_matches(query, k, v))
    }

    /// A required parameter: present, and its value(s) match. A repeated
    /// parameter satisfies a deny rule if any value matches and an allow rule
    /// only if every value matches (servers disagree on which one they use).
    fn query_param_matches(&self, query: Option<&str>, key: &str, glob: &str) -> bool {
        let mut seen = false;
        for (k, v) in query_pairs(query.unwrap_or("")) {
            if *k != *key {
                continue;
            }
            let ok = wildcard_match(glob.as_bytes(), v.as_bytes());
            match (self.polarity, ok) {
                (Polarity::Deny, true) => return true,
                (Polarity::Allow, false) => return false,
                _ => seen = true,
            }
        }
        self.polarity == Polarity::Allow && seen
    }
}

/// The `key=value` pairs of a raw query string (or an `application/x-www-form-urlencoded`
/// body), split at `&`, keys and values percent- and `+`-decoded exactly as the query rules
/// compare them; a pair without `=` has an empty value. Callers that look for a parameter
/// (e.g. the sidecar's `_method` override check) see what the rules see.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

/// Percent- and `+`-decode a query component; borrows when there is nothing to decode.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_keys_and_values() {
        let pairs: Vec<(String, String)> = query_pairs("a=1&&%5Fmethod=DEL%45TE&flag&x=a+b=c")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a".into(), "1".into()),
                ("_method".into(), "DELETE".into()),
                ("flag".into(), String::new()),
                ("x".into(), "a b=c".into()),
            ]
        );
        assert_eq!(query_pairs("").count(), 0);
    }

    #[test]
    fn decoding() {
        assert_eq!(decode("plain"), "plain");
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("%66orce"), "force");
        assert_eq!(decode("bad%zz%4"), "bad%zz%4");
        assert_eq!(decode("%41"), "A");
    }
}
