//! The `http` section of a rule: `access` xor `allow`, request rules that say
//! something, valid methods, path globs and query matchers.

use super::{Problems, syntax};
use crate::error::FieldPath;
use crate::model::{HttpRules, RequestRule};

pub fn check(rules: &HttpRules, path: &FieldPath, out: &mut Problems) {
    match (rules.access, rules.allow.is_empty()) {
        (Some(_), false) => out.push(
            path.clone(),
            "`access` and `allow` cannot be combined: the preset already decides which requests \
             pass; keep `access` or list `allow` rules",
        ),
        (None, true) => out.push(
            path.clone(),
            "http rules need `access` or at least one `allow` rule; with neither, every request \
             would be denied (to allow every request omit `http` or write `access: full`)",
        ),
        _ => {}
    }
    for (kind, list) in [("allow", &rules.allow), ("deny", &rules.deny)] {
        for (j, rule) in list.iter().enumerate() {
            check_request_rule(kind, rule, &path.key(kind).index(j), out);
        }
    }
}

fn check_request_rule(kind: &str, rule: &RequestRule, path: &FieldPath, out: &mut Problems) {
    if rule.methods.is_empty() && rule.path.is_none() && rule.query.is_empty() {
        let hint = if kind == "allow" {
            "to allow every request write `access: full` instead"
        } else {
            "remove it, or say what to deny"
        };
        out.push(
            path.clone(),
            format!("an empty {kind} rule would match every request; give methods, path or query ({hint})"),
        );
    }
    for (m, method) in rule.methods.iter().enumerate() {
        let at = path.key("methods").index(m);
        if !syntax::is_token(method) {
            out.push(
                at,
                format!(
                    "method `{method}` is not an HTTP method token; write e.g. `GET` or `POST`"
                ),
            );
        } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
            out.push(
                at,
                format!(
                    "method `{method}` must be upper-case (`{}`); HTTP methods are case-sensitive",
                    method.to_ascii_uppercase()
                ),
            );
        } else if rule.methods[..m].contains(method) {
            out.push(at, format!("duplicate method `{method}`; remove it"));
        }
    }
    if let Some(glob) = &rule.path
        && let Err(why) = check_path_glob(glob)
    {
        out.push(path.key("path"), format!("path `{glob}` {why}"));
    }
    for (key, value) in &rule.query {
        let at = path.key("query").key(key);
        if key.is_empty()
            || key
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "&=#".contains(c))
        {
            out.push(
                at.clone(),
                format!("query parameter name `{key}` is invalid: it may not be empty or contain whitespace, `&`, `=` or `#`"),
            );
        }
        if value.chars().any(|c| c.is_control() || "&#".contains(c)) {
            out.push(
                at,
                format!("query value glob `{value}` is invalid: it may not contain control characters, `&` or `#` (`*` matches any value)"),
            );
        }
    }
}

/// A path glob: starts with `/`; RFC 3986 path characters plus `*`; `**`
/// only as a whole segment; no `.` or `..` segments (requests are normalised,
/// so such a pattern could never match).
fn check_path_glob(glob: &str) -> Result<(), String> {
    if !glob.starts_with('/') {
        return Err(format!(
            "must start with `/` (`/{}`)",
            glob.trim_start_matches('*')
        ));
    }
    let bytes = glob.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let ok = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
        if !ok {
            let c = glob[i..].chars().next().unwrap_or('?');
            return Err(format!(
                "contains `{c}`; path globs use URL path characters (percent-encode others, \
                 e.g. `%20`) plus `*` and `**`"
            ));
        }
        if b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err("has a `%` that is not followed by two hex digits".to_owned());
        }
    }
    for segment in glob[1..].split('/') {
        if segment.contains("**") && segment != "**" {
            return Err(format!(
                "has `**` inside the segment `{segment}`; `**` must be a whole segment \
                 (`/a/**/b`), use `*` to match within a segment"
            ));
        }
        if segment == "." || segment == ".." {
            return Err(format!(
                "has a `{segment}` segment; request paths are normalised before matching, so it \
                 could never match"
            ));
        }
    }
    Ok(())
}
