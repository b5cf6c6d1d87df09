//! The Palisade policy language.
//!
//! Owns: the YAML document model ([`model`]), parsing with precise errors and
//! every validation rule ([`parse`], [`validate`]), the compiled matcher used on
//! the hot path ([`compiled`]), and the [`Decision`] value that metrics, audit
//! events and HTTP 403 bodies are all derived from.
//!
//! Must never: do I/O beyond reading the bytes it is handed, allocate per
//! request on the matching path for ASCII hosts, or accept a document that
//! would silently mean allow-all or deny-all.

#![forbid(unsafe_code)]

pub mod addr;
pub mod compiled;
pub mod decision;
pub mod error;
pub mod host;
pub mod model;
pub mod parse;
pub mod schema;
pub mod validate;

pub use compiled::{
    CompiledPolicy, PathGlob, PathProblem, RuleId, has_path_parameters, judged_path, normalize_path,
};
pub use decision::{Decision, DenyReason};
pub use error::{PolicyError, PolicyErrors};
pub use model::Policy;
pub use parse::{MAX_DEPTH, MAX_FLOW_BRACKETS, MAX_NODES, MAX_POLICY_BYTES, parse_policy};
pub use validate::validate;
