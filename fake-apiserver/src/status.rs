//! `metav1.Status` bodies: every failure the double answers, worded and coded as the real
//! kube-apiserver words and codes it (kind Status, apiVersion v1, status Failure, code,
//! reason, message, details). Owns only the shapes; the decisions live with the callers.

use serde_json::{Value, json};

use crate::resource::ResourceDef;

/// One `details.causes[]` entry (a field-level validation failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, …
    pub reason: &'static str,
    /// The text after the field path: `Required value`, `Invalid value: …`.
    pub message: String,
    /// The field path, `spec.size` or `spec.items[0].name`.
    pub field: String,
}

impl Cause {
    pub(crate) fn new(reason: &'static str, field: &str, message: impl Into<String>) -> Cause {
        Cause {
            reason,
            message: message.into(),
            field: field.to_owned(),
        }
    }

    fn text(&self) -> String {
        if self.field.is_empty() {
            // The real server prints a root field path as `<nil>`.
            format!("<nil>: {}", self.message)
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// A failure answer: the HTTP status is `code`, the body its `Status`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, name: &str, group: &str, kind: &str, causes: &[Cause]) -> Self {
        let mut d = json!({ "name": name, "kind": kind });
        if !group.is_empty() {
            d["group"] = group.into();
        }
        if !causes.is_empty() {
            d["causes"] = causes
                .iter()
                .map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field }))
                .collect();
        }
        self.details = Some(d);
        self
    }

    /// The `Status` JSON body.
    pub(crate) fn body(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }

    pub(crate) fn not_found(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", def.qualified()),
        )
        .with_details(name, &def.group, &def.plural, &[])
    }

    pub(crate) fn namespace_not_found(ns: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found")).with_details(
            ns,
            "",
            "namespaces",
            &[],
        )
    }

    /// No route: the path names no resource this server serves.
    pub(crate) fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details("", "", "", &[])
    }

    pub(crate) fn already_exists(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", def.qualified()),
        )
        .with_details(name, &def.group, &def.plural, &[])
    }

    /// `Operation cannot be fulfilled on …`: a stale resourceVersion or a failed precondition.
    pub(crate) fn conflict(def: &ResourceDef, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                def.qualified()
            ),
        )
        .with_details(name, &def.group, &def.plural, &[])
    }

    /// The message of a stale-resourceVersion conflict, word for word the real one.
    pub(crate) const MODIFIED: &'static str = "the object has been modified; please apply your \
                                               changes to the latest version and try again";

    /// 422 Invalid, `Kind "name" is invalid: …` with one cause per field.
    pub(crate) fn invalid(def: &ResourceDef, name: &str, causes: &[Cause]) -> ApiError {
        let list = match causes {
            [one] => one.text(),
            many => format!(
                "[{}]",
                many.iter().map(Cause::text).collect::<Vec<_>>().join(", ")
            ),
        };
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {list}", def.group_kind()),
        )
        .with_details(name, &def.group, &def.kind, causes)
    }

    pub(crate) fn forbidden(def: &ResourceDef, name: &str, why: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", def.qualified()),
        )
        .with_details(name, &def.group, &def.plural, &[])
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 422 for watch parameters that do not go together.
    pub(crate) fn invalid_watch(message: &str) -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {message}"),
        )
    }

    /// 422 without a field: a JSON patch that cannot be applied.
    pub(crate) fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    pub(crate) fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub(crate) fn unsupported_media_type(content_type: &str, accepted: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted \
                 media types include: {accepted}"
            ),
        )
    }

    /// 410 Expired, as a watch from a compacted resourceVersion receives it.
    pub(crate) fn expired(asked: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {asked} ({oldest})"),
        )
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }
}
