//! Semantic validation of a deserialised [`crate::Policy`]: every rule that
//! the type system cannot express. All problems are collected, none stops the
//! others. The list of rules, with the message each gives, is in
//! docs/policy.md ("Validation rules"); every rule has a unit test here and a
//! fixture in `policies/testdata/invalid/`.
//!
//! Owns: the judgement of what a policy may say. Must never: accept a policy
//! that would silently mean allow-all or deny-all, or one whose meaning
//! depends on rule order.

mod credentials;
mod http;
mod rules;
pub mod syntax;

#[cfg(test)]
mod tests;

use crate::error::{FieldPath, PolicyError, PolicyErrors, Problem};
use crate::model::{API_VERSION, KIND, Policy};

/// Validate a policy built in code (no source text, so no line/column).
/// [`crate::parse_policy`] runs the same checks on documents.
pub fn validate(policy: &Policy) -> Result<(), PolicyErrors> {
    let problems = problems(policy);
    if problems.is_empty() {
        return Ok(());
    }
    Err(PolicyErrors(
        problems
            .into_iter()
            .map(|p| PolicyError {
                path: p.path.to_string(),
                location: None,
                message: p.message,
            })
            .collect(),
    ))
}

/// Every problem in the policy, in document order.
pub(crate) fn problems(policy: &Policy) -> Vec<Problem> {
    let mut out = Problems::default();
    let root = FieldPath::root();
    if policy.api_version != API_VERSION {
        out.push(
            root.key("apiVersion"),
            format!(
                "apiVersion is `{}`; it must be `{API_VERSION}`",
                policy.api_version
            ),
        );
    }
    if policy.kind != KIND {
        out.push(
            root.key("kind"),
            format!("kind is `{}`; it must be `{KIND}`", policy.kind),
        );
    }
    let metadata = root.key("metadata");
    if let Err(why) = syntax::dns_label(&policy.metadata.name) {
        out.push(
            metadata.key("name"),
            format!("policy name `{}` {why}", policy.metadata.name),
        );
    }
    for (key, value) in &policy.metadata.labels {
        let path = metadata.key("labels").key(key);
        if let Err(why) = syntax::label_key(key) {
            out.push(path.clone(), format!("label key `{key}` {why}"));
        }
        if let Err(why) = syntax::label_value(value) {
            out.push(path, format!("label value `{value}` {why}"));
        }
    }
    let spec = root.key("spec");
    rules::check(policy, &spec, &mut out);
    credentials::check(policy, &spec, &mut out);
    out.0
}

/// The problems found so far.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(Problem {
            path,
            message: message.into(),
        });
    }
}
