//! Every example policy parses, validates and compiles.
use std::path::Path;

use palisade_policy::{CompiledPolicy, parse_policy};

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schema/policy.schema.json"),
            "{} must start with the schema modeline",
            path.display()
        );
        let policy = parse_policy(&bytes).unwrap_or_else(|e| {
            panic!(
                "{} does not parse:\n{}",
                path.display(),
                e.render(&path.display().to_string())
            )
        });
        let compiled = CompiledPolicy::compile(&policy);
        assert_eq!(compiled.name(), path.file_stem().unwrap().to_str().unwrap());
        count += 1;
    }
    assert!(
        count >= 4,
        "expected at least the four shipped examples, found {count}"
    );
}
