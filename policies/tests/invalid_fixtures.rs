//! Every fixture in `testdata/invalid/` must be refused with the message in
//! its `.expected` file (a substring of the rendered errors, including the
//! field path). A fixture without `.expected`, or an `.expected` without a
//! fixture, fails the test.
use std::collections::BTreeSet;
use std::path::Path;

use palisade_policy::parse_policy;

#[test]
fn every_invalid_fixture_is_refused_with_its_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/invalid");
    let mut yaml = BTreeSet::new();
    let mut expected = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") => yaml.insert(stem),
            Some("expected") => expected.insert(stem),
            _ => panic!("unexpected file {} in testdata/invalid", path.display()),
        };
    }
    let lacking: Vec<_> = yaml.difference(&expected).collect();
    assert!(
        lacking.is_empty(),
        "fixtures without .expected: {lacking:?}"
    );
    let orphans: Vec<_> = expected.difference(&yaml).collect();
    assert!(
        orphans.is_empty(),
        ".expected files without a fixture: {orphans:?}"
    );
    assert!(yaml.len() >= 90, "the fixture set shrank to {}", yaml.len());

    let mut failures = Vec::new();
    for name in &yaml {
        let bytes = std::fs::read(dir.join(format!("{name}.yaml"))).unwrap();
        let want = std::fs::read_to_string(dir.join(format!("{name}.expected"))).unwrap();
        let want = want.trim_end_matches('\n');
        assert!(!want.is_empty(), "{name}.expected is empty");
        match parse_policy(&bytes) {
            Ok(_) => failures.push(format!(
                "{name}: accepted, but must be refused with `{want}`"
            )),
            Err(errors) => {
                let got = errors.to_string();
                if !got.contains(want) {
                    failures.push(format!("{name}: expected `{want}`, got:\n{got}"));
                }
                for e in &errors.0 {
                    if e.path != "(document)" && e.location.is_none() {
                        failures.push(format!("{name}: error without a line and column: {e}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
