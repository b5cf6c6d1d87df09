//! `docs/openapi.json` is generated from the route table and must match it.
//! Regenerate with `PALISADE_UPDATE_OPENAPI=1 cargo test -p palisade-gateway --test openapi`.
#![allow(clippy::unwrap_used)]

mod support;

use palisade_gateway::routes::ROUTES;
use support::*;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

#[test]
fn checked_in_document_is_current() {
    let generated = palisade_gateway::openapi::render();
    if std::env::var_os("PALISADE_UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/openapi.json is stale; run PALISADE_UPDATE_OPENAPI=1 cargo test -p palisade-gateway --test openapi"
    );
}

#[test]
fn document_has_exactly_the_routes_of_the_table() {
    let doc = palisade_gateway::openapi::document();
    let paths = doc["paths"].as_object().unwrap();
    let mut ops = 0;
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            ops += 1;
            let route = ROUTES
                .iter()
                .find(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(method))
                .unwrap_or_else(|| panic!("{method} {path} is not in the route table"));
            assert_eq!(op["operationId"], route.id.as_str());
            // Every $ref resolves.
            let text = op.to_string();
            for part in text.split("#/components/schemas/").skip(1) {
                let name = part.split('"').next().unwrap();
                assert!(
                    doc["components"]["schemas"].get(name).is_some(),
                    "{name} missing"
                );
            }
        }
    }
    assert_eq!(ops, ROUTES.len());
}

#[tokio::test]
async fn served_document_equals_generated() {
    let gw = Gw::start(&[]).await;
    let a = get(&gw.client(None), "/openapi.json").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json().unwrap(), palisade_gateway::openapi::document());
    gw.running.shutdown().await;
}

#[test]
fn document_is_valid_openapi() {
    let script = "import json,sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\n";
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let msg =
            "python3 with openapi-spec-validator is needed (pip install openapi-spec-validator)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipping: {msg}");
        return;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", script, CHECKED_IN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
