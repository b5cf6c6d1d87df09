//! CRD structural-schema admission: null pruning, defaulting, unknown-field handling and
//! validation of a custom resource against its version's `openAPIV3Schema`, including
//! `x-kubernetes-validations` CEL rules (`self`, and `oldSelf` on update). Owns only the
//! verdict on one object; storage and HTTP are elsewhere.
//!
//! Unknown fields are rejected by default (as the real server does under
//! `fieldValidation=Strict`); `Warn` and `Ignore` prune them as the real server does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use regex::Regex;
use serde_json::Value;

use crate::status::Cause;

/// What to do with a field the schema does not declare (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Reject (the default here).
    Strict,
    /// Drop it and say so in a `Warning` header.
    Warn,
    /// Drop it silently.
    Ignore,
}

/// What admission found: field failures (any → 422) and warnings.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub causes: Vec<Cause>,
    pub warnings: Vec<String>,
}

/// One compiled `openAPIV3Schema`.
#[derive(Debug)]
pub(crate) struct Schema {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    ty: Option<String>,
    nullable: bool,
    properties: BTreeMap<String, Node>,
    additional: Additional,
    items: Option<Box<Node>>,
    required: Vec<String>,
    enumeration: Option<Vec<Value>>,
    pattern: Option<(Regex, String)>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: bool,
    exclusive_maximum: bool,
    multiple_of: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    unique_items: bool,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    format: Option<String>,
    default: Option<Value>,
    preserve_unknown: bool,
    int_or_string: bool,
    embedded_resource: bool,
    list_type: Option<String>,
    list_map_keys: Vec<String>,
    all_of: Vec<Node>,
    any_of: Vec<Node>,
    one_of: Vec<Node>,
    not: Option<Box<Node>>,
    rules: Vec<Rule>,
}

#[derive(Debug, Default)]
enum Additional {
    /// Not given: undeclared fields are unknown.
    #[default]
    Unset,
    Allowed,
    Schema(Box<Node>),
}

struct Rule {
    source: String,
    program: Arc<cel::Program>,
    message: Option<String>,
    field_path: Option<String>,
    reason: Option<String>,
    transition: bool,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule").field("rule", &self.source).finish()
    }
}

/// Keywords this compiler understands; any other is a schema it would silently misread.
const KNOWN_KEYWORDS: &[&str] = &[
    "type",
    "nullable",
    "properties",
    "additionalProperties",
    "items",
    "required",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "format",
    "default",
    "description",
    "title",
    "example",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
];

impl Schema {
    /// Compile a schema; an error names the keyword and where it is.
    pub(crate) fn compile(v: &Value) -> Result<Schema, String> {
        Ok(Schema {
            root: compile(v, "openAPIV3Schema")?,
        })
    }

    /// Prune, default and validate `obj` (a whole custom resource) in place; `old` is the
    /// stored object on update (for `oldSelf` rules).
    pub(crate) fn admit(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        unknown: FieldValidation,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let Some(map) = obj.as_object_mut() else {
            verdict
                .causes
                .push(Cause::new("FieldValueTypeInvalid", "", "must be an object"));
            return verdict;
        };
        // apiVersion, kind and metadata are the server's; the schema covers the rest.
        let mut rest: serde_json::Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut body = Value::Object(std::mem::take(&mut rest));
        shape(&self.root, &mut body, "", unknown, &mut verdict);
        let old_body = old.map(|o| {
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
                m.remove("metadata");
            }
            o
        });
        check(
            &self.root,
            &body,
            old_body.as_ref(),
            "",
            &mut verdict.causes,
        );
        map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
        if let Value::Object(b) = body {
            map.extend(b);
        }
        verdict
    }
}

fn compile(v: &Value, at: &str) -> Result<Node, String> {
    let Some(m) = v.as_object() else {
        return Err(format!("{at}: a schema must be an object"));
    };
    if let Some(k) = m.keys().find(|k| !KNOWN_KEYWORDS.contains(&k.as_str())) {
        return Err(format!(
            "{at}: schema keyword {k:?} is not supported by this fake apiserver (nor allowed in a structural schema)"
        ));
    }
    let num = |k: &str| m.get(k).and_then(Value::as_f64);
    let count = |k: &str| m.get(k).and_then(Value::as_u64);
    let flag = |k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
    let list = |k: &str| -> Result<Vec<Node>, String> {
        m.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, s)| compile(s, &format!("{at}.{k}[{i}]")))
                    .collect()
            })
            .unwrap_or(Ok(Vec::new()))
    };
    let mut node = Node {
        ty: m.get("type").and_then(Value::as_str).map(str::to_owned),
        nullable: flag("nullable"),
        required: m
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        enumeration: m.get("enum").and_then(Value::as_array).cloned(),
        minimum: num("minimum"),
        maximum: num("maximum"),
        exclusive_minimum: flag("exclusiveMinimum"),
        exclusive_maximum: flag("exclusiveMaximum"),
        multiple_of: num("multipleOf"),
        min_length: count("minLength"),
        max_length: count("maxLength"),
        min_items: count("minItems"),
        max_items: count("maxItems"),
        unique_items: flag("uniqueItems"),
        min_properties: count("minProperties"),
        max_properties: count("maxProperties"),
        format: m.get("format").and_then(Value::as_str).map(str::to_owned),
        default: m.get("default").cloned(),
        preserve_unknown: flag("x-kubernetes-preserve-unknown-fields"),
        int_or_string: flag("x-kubernetes-int-or-string"),
        embedded_resource: flag("x-kubernetes-embedded-resource"),
        list_type: m
            .get("x-kubernetes-list-type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        list_map_keys: m
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        all_of: list("allOf")?,
        any_of: list("anyOf")?,
        one_of: list("oneOf")?,
        ..Node::default()
    };
    if let Some(p) = m.get("pattern").and_then(Value::as_str) {
        let re = Regex::new(p).map_err(|e| format!("{at}.pattern {p:?}: {e}"))?;
        node.pattern = Some((re, p.to_owned()));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            node.properties
                .insert(k.clone(), compile(s, &format!("{at}.properties.{k}"))?);
        }
    }
    node.additional = match m.get("additionalProperties") {
        None => Additional::Unset,
        Some(Value::Bool(true)) => Additional::Allowed,
        Some(Value::Bool(false)) => Additional::Unset,
        Some(s) => Additional::Schema(Box::new(compile(s, &format!("{at}.additionalProperties"))?)),
    };
    if let Some(items) = m.get("items") {
        node.items = Some(Box::new(compile(items, &format!("{at}.items"))?));
    }
    if let Some(n) = m.get("not") {
        node.not = Some(Box::new(compile(n, &format!("{at}.not"))?));
    }
    if let Some(rules) = m.get("x-kubernetes-validations").and_then(Value::as_array) {
        for r in rules {
            let Some(source) = r["rule"].as_str() else {
                return Err(format!(
                    "{at}.x-kubernetes-validations: a rule without `rule`"
                ));
            };
            let program = cel::Program::compile(source).map_err(|e| {
                format!("{at}.x-kubernetes-validations: cannot compile CEL rule {source:?}: {e}")
            })?;
            node.rules.push(Rule {
                source: source.to_owned(),
                program: Arc::new(program),
                message: r["message"].as_str().map(str::to_owned),
                field_path: r["fieldPath"].as_str().map(str::to_owned),
                reason: r["reason"].as_str().map(str::to_owned),
                transition: source.contains("oldSelf"),
            });
        }
    }
    Ok(node)
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Null pruning, defaults and unknown fields: the structure-changing half of admission.
fn shape(node: &Node, v: &mut Value, path: &str, unknown: FieldValidation, out: &mut Verdict) {
    match v {
        Value::Object(map) if node.ty.as_deref().is_none_or(|t| t == "object") => {
            // Null for a non-nullable property is dropped (then defaulted), as the real server does.
            map.retain(|k, val| {
                !(val.is_null() && node.properties.get(k).is_some_and(|p| !p.nullable))
            });
            for (k, p) in &node.properties {
                if !map.contains_key(k)
                    && let Some(d) = &p.default
                {
                    map.insert(k.clone(), d.clone());
                }
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let at = child(path, &k);
                if let Some(p) = node.properties.get(&k) {
                    if let Some(val) = map.get_mut(&k) {
                        shape(p, val, &at, unknown, out);
                    }
                    continue;
                }
                match &node.additional {
                    Additional::Schema(s) => {
                        if let Some(val) = map.get_mut(&k) {
                            shape(s, val, &at, unknown, out);
                        }
                        continue;
                    }
                    Additional::Allowed => continue,
                    Additional::Unset => {}
                }
                if node.preserve_unknown
                    || (node.embedded_resource
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                {
                    continue;
                }
                match unknown {
                    FieldValidation::Strict => out.causes.push(Cause::new(
                        "FieldValueInvalid",
                        &at,
                        format!("unknown field \"{at}\""),
                    )),
                    FieldValidation::Warn => {
                        out.warnings.push(format!("unknown field \"{at}\""));
                        map.remove(&k);
                    }
                    FieldValidation::Ignore => {
                        map.remove(&k);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = &node.items {
                for (i, val) in items.iter_mut().enumerate() {
                    shape(item, val, &format!("{path}[{i}]"), unknown, out);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => false,
    }
}

/// `"x"` for strings, the JSON text otherwise: how the real server quotes a value.
fn shown(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".to_owned(),
        Value::Array(_) => "\"array\"".to_owned(),
        other => other.to_string(),
    }
}

fn invalid(out: &mut Vec<Cause>, path: &str, v: &Value, why: String) {
    out.push(Cause::new(
        "FieldValueInvalid",
        path,
        format!("Invalid value: {}: {why}", shown(v)),
    ));
}

fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
        }
        "date" => {
            let parts: Vec<&str> = s.split('-').collect();
            parts.len() == 3
                && parts[0].len() == 4
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        }
        "uuid" => uuid::Uuid::parse_str(s).is_ok(),
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, len)| {
            let Ok(len) = len.parse::<u8>() else {
                return false;
            };
            match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => len <= 32,
                Ok(std::net::IpAddr::V6(_)) => len <= 128,
                Err(_) => false,
            }
        }),
        // Other formats (int32, uint64, …) are not validated by the real server either.
        _ => true,
    }
}

/// The value-checking half of admission (pure: structure was settled by [`shape`]).
fn check(node: &Node, v: &Value, old: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let at = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if !node.nullable && (node.ty.is_some() || node.int_or_string) {
            let ty = if node.int_or_string {
                "integer,string"
            } else {
                node.ty.as_deref().unwrap_or("")
            };
            out.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!("Invalid value: \"null\": {at} in body must be of type {ty}: \"null\""),
            ));
        }
        return;
    }
    if node.int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            out.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"{t}\": {at} in body must be of type integer,string: \"{t}\"",
                    t = type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(ty) = &node.ty
        && !has_type(ty, v)
    {
        out.push(Cause::new(
            "FieldValueTypeInvalid",
            path,
            format!(
                "Invalid value: \"{t}\": {at} in body must be of type {ty}: \"{t}\"",
                t = type_name(v)
            ),
        ));
        return;
    }
    if let Some(allowed) = &node.enumeration
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        out.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!(
                "Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
    match v {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = node.max_length
                && len > max
            {
                out.push(Cause::new(
                    "FieldValueTooLong",
                    path,
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = node.min_length
                && len < min
            {
                invalid(
                    out,
                    path,
                    v,
                    format!("{at} in body should be at least {min} chars long"),
                );
            }
            if let Some((re, text)) = &node.pattern
                && !re.is_match(s)
            {
                invalid(out, path, v, format!("{at} in body should match '{text}'"));
            }
            if let Some(f) = &node.format
                && !format_ok(f, s)
            {
                invalid(
                    out,
                    path,
                    v,
                    format!("{at} in body must be of type {f}: {v}"),
                );
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if let Some(max) = node.maximum {
                if node.exclusive_maximum && x >= max {
                    invalid(
                        out,
                        path,
                        v,
                        format!("{at} in body should be less than {max}"),
                    );
                } else if x > max {
                    invalid(
                        out,
                        path,
                        v,
                        format!("{at} in body should be less than or equal to {max}"),
                    );
                }
            }
            if let Some(min) = node.minimum {
                if node.exclusive_minimum && x <= min {
                    invalid(
                        out,
                        path,
                        v,
                        format!("{at} in body should be greater than {min}"),
                    );
                } else if x < min {
                    invalid(
                        out,
                        path,
                        v,
                        format!("{at} in body should be greater than or equal to {min}"),
                    );
                }
            }
            if let Some(m) = node.multiple_of
                && m != 0.0
                && (x / m).fract() != 0.0
            {
                invalid(
                    out,
                    path,
                    v,
                    format!("{at} in body should be a multiple of {m}"),
                );
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = node.max_items
                && n > max
            {
                out.push(Cause::new(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            if let Some(min) = node.min_items
                && n < min
            {
                invalid(
                    out,
                    path,
                    v,
                    format!("{at} in body should have at least {min} items"),
                );
            }
            let keyed = |item: &Value| -> Value {
                if node.list_type.as_deref() == Some("map") {
                    node.list_map_keys.iter().map(|k| item[k].clone()).collect()
                } else {
                    item.clone()
                }
            };
            if node.unique_items || matches!(node.list_type.as_deref(), Some("set" | "map")) {
                let mut seen: Vec<Value> = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let key = keyed(item);
                    if seen.contains(&key) {
                        out.push(Cause::new(
                            "FieldValueDuplicate",
                            &format!("{path}[{i}]"),
                            format!("Duplicate value: {}", shown(&key)),
                        ));
                    }
                    seen.push(key);
                }
            }
            if let Some(item) = &node.items {
                for (i, val) in items.iter().enumerate() {
                    check(item, val, None, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(map) => {
            for r in &node.required {
                if !map.contains_key(r) {
                    out.push(Cause::new(
                        "FieldValueRequired",
                        &child(path, r),
                        "Required value",
                    ));
                }
            }
            let n = map.len() as u64;
            if let Some(max) = node.max_properties
                && n > max
            {
                out.push(Cause::new(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            if let Some(min) = node.min_properties
                && n < min
            {
                invalid(
                    out,
                    path,
                    v,
                    format!("{at} in body should have at least {min} properties"),
                );
            }
            for (k, val) in map {
                let old_val = old.and_then(|o| o.get(k));
                if let Some(p) = node.properties.get(k) {
                    check(p, val, old_val, &child(path, k), out);
                } else if let Additional::Schema(s) = &node.additional {
                    check(s, val, old_val, &child(path, k), out);
                }
            }
        }
        _ => {}
    }
    combinators(node, v, old, path, out);
    for rule in &node.rules {
        evaluate(rule, v, old, path, out);
    }
}

fn passes(node: &Node, v: &Value, old: Option<&Value>, path: &str) -> bool {
    let mut scratch = Vec::new();
    check(node, v, old, path, &mut scratch);
    scratch.is_empty()
}

fn combinators(node: &Node, v: &Value, old: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let at = if path.is_empty() { "<root>" } else { path };
    for sub in &node.all_of {
        check(sub, v, old, path, out);
    }
    if !node.any_of.is_empty() && !node.any_of.iter().any(|s| passes(s, v, old, path)) {
        invalid(
            out,
            path,
            v,
            format!("{at} in body must validate at least one schema (anyOf)"),
        );
    }
    if !node.one_of.is_empty() {
        let n = node
            .one_of
            .iter()
            .filter(|s| passes(s, v, old, path))
            .count();
        if n != 1 {
            let found = if n == 0 { "none" } else { "more than one" };
            invalid(
                out,
                path,
                v,
                format!(
                    "{at} in body must validate one and only one schema (oneOf). Found {found} valid"
                ),
            );
        }
    }
    if let Some(not) = &node.not
        && passes(not, v, old, path)
    {
        invalid(
            out,
            path,
            v,
            format!("{at} in body should not validate the given schema"),
        );
    }
}

/// JSON as CEL sees it: integers are `int` (Kubernetes CEL has no implicit `uint`).
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<String, cel::Value> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

fn evaluate(rule: &Rule, v: &Value, old: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    if rule.transition && old.is_none() {
        return; // transition rules run on update only
    }
    let mut cx = cel::Context::default();
    cx.add_variable_from_value("self", to_cel(v));
    if let Some(o) = old {
        cx.add_variable_from_value("oldSelf", to_cel(o));
    }
    let field = match &rule.field_path {
        Some(f) => child(path, f.trim_start_matches('.')),
        None => path.to_owned(),
    };
    let reason = match rule.reason.as_deref() {
        Some("FieldValueRequired") => "FieldValueRequired",
        Some("FieldValueDuplicate") => "FieldValueDuplicate",
        Some("FieldValueForbidden") => "FieldValueForbidden",
        _ => "FieldValueInvalid",
    };
    match rule.program.execute(&cx) {
        Ok(cel::Value::Bool(true)) => {}
        Ok(cel::Value::Bool(false)) => {
            let why = match &rule.message {
                Some(m) => m.clone(),
                None => format!("failed rule: {}", rule.source),
            };
            out.push(Cause::new(
                reason,
                &field,
                format!("Invalid value: \"{}\": {why}", type_name(v)),
            ));
        }
        Ok(other) => out.push(Cause::new(
            "FieldValueInvalid",
            &field,
            format!(
                "Invalid value: \"{}\": rule {:?} did not evaluate to a bool: {other:?}",
                type_name(v),
                rule.source
            ),
        )),
        Err(e) => out.push(Cause::new(
            "FieldValueInvalid",
            &field,
            format!(
                "Invalid value: \"{}\": rule {:?} failed to evaluate: {e}",
                type_name(v),
                rule.source
            ),
        )),
    }
}
