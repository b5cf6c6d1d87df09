//! The JSON Schema of the policy document, generated from the model types.
//!
//! The generated schema is checked in at `policies/schema/policy.schema.json`
//! for editors (`# yaml-language-server: $schema=...`); a test fails when the
//! checked-in file drifts. Regenerate with
//! `UPDATE_SCHEMA=1 cargo test -p palisade-policy schema`.
//!
//! The schema checks shape only; the semantic rules live in [`crate::validate`].

use crate::model::Policy;

/// The schema as pretty-printed JSON, with a trailing newline.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Policy);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn checked_in_schema_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/policy.schema.json");
        let generated = json_schema();
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} is out of date with the model types; regenerate it with\n    \
             UPDATE_SCHEMA=1 cargo test -p palisade-policy schema\nand commit the result",
            path.display()
        );
    }

    #[test]
    fn schema_describes_the_document() {
        let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
        assert_eq!(schema["title"], "Policy");
        let required = schema["required"].as_array().unwrap();
        for field in ["apiVersion", "kind", "metadata", "spec"] {
            assert!(
                required.iter().any(|r| r == field),
                "{field} must be required"
            );
        }
        assert_eq!(schema["additionalProperties"], false);
    }
}
