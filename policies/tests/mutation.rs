//! A cheap, deterministic stand-in for the fuzzer that runs in every
//! `cargo test`: 20 000 mutations of the examples and invalid fixtures must
//! never panic, and whatever parses must validate, compile, match and
//! round-trip through YAML.
#![allow(clippy::unwrap_used)] // tests may unwrap
use std::path::Path;

use palisade_policy::{CompiledPolicy, parse_policy, validate};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"*",
    b"*.",
    b"**",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"!secret ",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b": ",
    b"\n",
    b"\n  ",
    b"- ",
    b"---\n",
    b"'",
    b"\"",
    b"#",
    b"|\n",
    b"~",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"65536",
    b"18446744073709551616",
    b"1e9",
    b"\xff",
    b"\xc3\xa9",
    b"\t",
    b"\0",
    b"\\",
    b"%",
    b"127.0.0.1",
    b"::1",
    b"fe80::/10",
    b"xn--",
    b"B\xc3\xbccher.example",
    b"/**/",
    b"?",
    b"denyAll: true",
    b"tls: passthrough",
    b"credential: x",
    b"http: {}",
    b"access: full",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, t.iter().copied());
            }
            2 if at < out.len() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            3 if at < out.len() => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                let chunk: Vec<u8> = out[at..end].to_vec();
                out.splice(at..at, chunk);
            }
            4 => out.truncate(at),
            _ => {
                let i = rng.below(out.len().max(1));
                if let Some(b) = out.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    out
}

/// Files of one directory (small ones only), sorted for determinism.
fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
                let bytes = std::fs::read(&path).unwrap();
                if bytes.len() < 4096 {
                    files.push(bytes);
                }
            }
        }
    }
    files.sort();
    files
}

fn exercise(bytes: &[u8]) -> bool {
    let Ok(policy) = parse_policy(bytes) else {
        return false;
    };
    validate(&policy).unwrap_or_else(|e| panic!("parsed but does not validate: {e}"));
    let compiled = CompiledPolicy::compile(&policy);
    for rule in &policy.spec.egress {
        for host in &rule.hosts {
            let probe = host.replace('*', "x");
            for port in &rule.ports {
                let (decision, id) =
                    compiled.match_connection(&probe, u16::try_from(*port).unwrap());
                if let Some(id) = id {
                    assert!(decision.is_allow());
                    let _ = compiled.match_request(id, "GET", "/a/b", Some("q=1"));
                    let _ = compiled
                        .rule(id)
                        .allows_address("10.0.0.1".parse().unwrap());
                }
            }
            let _ = compiled.name_allowed(&probe);
        }
    }
    let yaml = serde_yaml_ng::to_string(&policy).unwrap();
    let again =
        parse_policy(yaml.as_bytes()).unwrap_or_else(|e| panic!("round trip failed: {e}\n{yaml}"));
    assert_eq!(again, policy, "round trip changed the policy");
    true
}

#[test]
fn mutated_documents_never_panic() {
    let valid = corpus("examples");
    let invalid = corpus("testdata/invalid");
    assert!(valid.len() >= 4 && invalid.len() > 50);
    for seed in valid.iter().chain(&invalid) {
        exercise(seed);
    }
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut parsed = 0;
    for i in 0..20_000 {
        // Half from the valid examples (mutations that still parse exercise
        // the matcher), half from the invalid fixtures (error paths).
        let pool = if rng.below(2) == 0 { &valid } else { &invalid };
        let seed = &pool[rng.below(pool.len())];
        let input = mutate(&mut rng, seed);
        let outcome = std::panic::catch_unwind(|| exercise(&input));
        match outcome {
            Ok(true) => parsed += 1,
            Ok(false) => {}
            Err(_) => panic!("input #{i} panicked:\n{}", String::from_utf8_lossy(&input)),
        }
    }
    eprintln!("{parsed} of 20000 mutated documents parsed and passed every property");
    // Some mutations must survive, or the test is not exercising the matcher.
    assert!(parsed > 100, "only {parsed} mutated documents parsed");
}
