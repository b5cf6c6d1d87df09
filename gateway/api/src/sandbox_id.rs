//! [`SandboxId`]: the one definition of a sandbox identifier, for the gateway,
//! the sidecar, the shim and every wire type that carries one.
//!
//! Must never: hold a value that is not `sbx-` + 32 lowercase hex digits (so
//! it is always safe in a URL path, a file name or a log line).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// A sandbox identifier: `sbx-` and 32 lowercase hex digits. On the wire it
/// is a plain JSON string; deserialising refuses anything else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

impl SandboxId {
    pub const PREFIX: &'static str = "sbx-";

    /// A fresh random identifier (the hex digits of a version 4 UUID drawn
    /// from the thread-local CSPRNG).
    #[cfg(feature = "generate")]
    pub fn generate() -> Self {
        let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        Self(format!("{}{}", Self::PREFIX, uuid.simple()))
    }

    /// Parse an identifier from a path segment, a flag or a token claim.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix(Self::PREFIX)?;
        (hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SandboxId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("`{s}` is not a sandbox id (sbx-<32 hex>)"))
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> String {
        id.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// In the OpenAPI document a sandbox id is exactly what it was as a `String`:
/// an inline `{"type": "string"}`.
impl JsonSchema for SandboxId {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_lowercase_hex_only() {
        let good = "sbx-0123456789abcdef0123456789abcdef";
        assert_eq!(
            SandboxId::parse(good).map(String::from).as_deref(),
            Some(good)
        );
        assert_eq!(SandboxId::parse(&good.to_uppercase()), None);
        assert_eq!(SandboxId::parse(&good.replace('f', "F")), None);
        assert_eq!(SandboxId::parse(&good[..good.len() - 1]), None);
    }

    #[test]
    fn json_is_a_plain_string_and_garbage_is_refused() {
        let id = SandboxId::parse("sbx-0123456789abcdef0123456789abcdef").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""sbx-0123456789abcdef0123456789abcdef""#);
        assert_eq!(serde_json::from_str::<SandboxId>(&json).unwrap(), id);
        let err = serde_json::from_str::<SandboxId>(r#""sbx-nope""#).unwrap_err();
        assert!(err.to_string().contains("not a sandbox id"), "{err}");
    }

    #[test]
    fn schema_is_that_of_a_string() {
        assert_eq!(
            schemars::schema_for!(SandboxId),
            schemars::schema_for!(String)
        );
    }
}
