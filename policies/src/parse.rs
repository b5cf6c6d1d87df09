//! Bytes → validated [`Policy`].
use crate::error::PolicyErrors;
use crate::model::Policy;

/// Largest policy document accepted.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// Parse and validate one YAML (or JSON) policy document.
pub fn parse_policy(_bytes: &[u8]) -> Result<Policy, PolicyErrors> {
    todo!("policy helper")
}
