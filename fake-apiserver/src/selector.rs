//! Label selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`) and
//! field selectors (`metadata.name=x`, `metadata.namespace!=y`, plus a resource's own
//! fields), parsed once per request and matched against stored JSON objects.

use serde_json::Value;

use crate::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

/// Split on commas that are not inside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn valid_key(k: &str) -> bool {
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_error(term: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why}: found '{term}'"
    ))
}

fn set(term: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| parse_error(term, "expected a parenthesised value list"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub(crate) fn parse(s: &str) -> Result<LabelSelector, ApiError> {
        let mut reqs = Vec::new();
        for term in terms(s) {
            let (key, op) = if let Some(k) = term.strip_prefix('!') {
                (k.trim(), Op::NotExists)
            } else if let Some((k, rest)) = term.split_once(" notin ") {
                (k.trim(), Op::NotIn(set(term, rest)?))
            } else if let Some((k, rest)) = term.split_once(" in ") {
                (k.trim(), Op::In(set(term, rest)?))
            } else if let Some((k, v)) = term.split_once("!=") {
                (k.trim(), Op::NotEq(v.trim().to_owned()))
            } else if let Some((k, v)) = term.split_once("==") {
                (k.trim(), Op::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = term.split_once('=') {
                (k.trim(), Op::Eq(v.trim().to_owned()))
            } else {
                (term, Op::Exists)
            };
            if !valid_key(key) {
                return Err(parse_error(term, "invalid label key"));
            }
            reqs.push(Requirement {
                key: key.to_owned(),
                op,
            });
        }
        Ok(LabelSelector(reqs))
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.0.iter().all(|r| {
            let v = labels.get(&r.key).and_then(Value::as_str);
            match &r.op {
                Op::Eq(x) => v == Some(x.as_str()),
                Op::NotEq(x) => v != Some(x.as_str()),
                Op::In(xs) => v.is_some_and(|v| xs.iter().any(|x| x == v)),
                Op::NotIn(xs) => v.is_none_or(|v| !xs.iter().any(|x| x == v)),
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
            }
        })
    }
}

/// A parsed field selector over dotted paths; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// `allowed` are the resource's own selectable fields beyond `metadata.name/namespace`.
    pub(crate) fn parse(s: &str, allowed: &[&str]) -> Result<FieldSelector, ApiError> {
        let mut out = Vec::new();
        for term in terms(s) {
            let (key, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let key = key.trim();
            if !matches!(key, "metadata.name" | "metadata.namespace") && !allowed.contains(&key) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {key}"
                )));
            }
            out.push((key.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(out))
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(key, equal, want)| {
            let got = key
                .split('.')
                .try_fold(obj, |v, k| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or("");
            (got == want) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({ "metadata": { "name": "n", "namespace": "ns", "labels": labels } })
    }

    #[test]
    fn every_label_operator_matches_as_kubernetes_does() {
        let o = obj(json!({ "app": "web", "tier": "front" }));
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app in (db, web)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("missing notin (db)", true),
            ("app notin (web)", false),
            ("app=web,tier in (front,back)", true),
            ("app=web,tier=back", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
        assert_eq!(LabelSelector::parse("a in x").unwrap_err().code, 400);
    }

    #[test]
    fn field_selectors_take_only_supported_fields() {
        let o = obj(json!({}));
        let f = FieldSelector::parse("metadata.name=n,metadata.namespace!=other", &[]).unwrap();
        assert!(f.matches(&o));
        assert!(
            !FieldSelector::parse("metadata.name=m", &[])
                .unwrap()
                .matches(&o)
        );
        let e = FieldSelector::parse("spec.x=1", &[]).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "field label not supported: spec.x")
        );
    }
}
