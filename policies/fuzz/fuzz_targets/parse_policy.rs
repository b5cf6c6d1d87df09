//! Arbitrary bytes into the policy parser: it must never panic, and whatever
//! it accepts must compile and match without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::{CompiledPolicy, parse_policy};

fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = parse_policy(data) {
        let compiled = CompiledPolicy::compile(&policy);
        for rule in &policy.spec.egress {
            for host in &rule.hosts {
                let (_, id) = compiled.match_connection(host, 443);
                if let Some(id) = id {
                    let _ = compiled.match_request(id, "GET", "/", None);
                }
                let _ = compiled.name_allowed(host);
            }
        }
    }
});
