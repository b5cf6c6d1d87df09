//! Matcher benchmarks on a generated 500-rule policy.
//!
//! Run: `cargo bench -p palisade-policy --bench matcher -- --warm-up-time 1 --measurement-time 3`
use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_policy::{CompiledPolicy, parse_policy};

const RULES: usize = 500;

/// 500 rules: each names one exact host and one wildcard on two ports, and
/// every fifth has HTTP rules (deny first, several allows).
fn policy_text() -> String {
    let mut y = String::from(
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: bench\nspec:\n  egress:\n",
    );
    for i in 0..RULES {
        let _ = write!(
            y,
            "    - name: rule-{i}\n      hosts:\n        - svc{i}.example{}.com\n        - \"*.cdn{i}.example.net\"\n      ports: [443, 8443]\n",
            i % 50
        );
        if i % 5 == 0 {
            y.push_str(
                "      http:\n        deny:\n          - methods: [DELETE]\n          - path: /admin/**\n          - query: {force: \"*\"}\n        allow:\n          - methods: [GET, HEAD]\n            path: /repos/*/*/issues/**\n          - methods: [POST]\n            path: /repos/*/*/issues\n          - methods: [GET]\n            path: /repos/*/*/pulls/*\n            query: {state: \"open\"}\n",
            );
        }
    }
    y
}

#[allow(clippy::expect_used)] // the policy is generated above; a panic is the bench's failure report
fn bench(c: &mut Criterion) {
    let text = policy_text();
    let policy =
        CompiledPolicy::compile(&parse_policy(text.as_bytes()).expect("bench policy is valid"));
    assert!(
        policy
            .match_connection("svc250.example0.com", 443)
            .1
            .is_some()
    );
    assert!(
        policy
            .match_connection("a.cdn377.example.net", 443)
            .1
            .is_some()
    );
    assert!(
        policy
            .match_connection("nothing.example.org", 443)
            .1
            .is_none()
    );
    let (_, id) = policy.match_connection("svc250.example0.com", 443);
    let id = id.expect("rule-250 matches");
    assert!(
        policy
            .match_request(
                id,
                "GET",
                "/repos/o/r/pulls/7",
                Some("per_page=50&state=open")
            )
            .is_allow()
    );

    let mut g = c.benchmark_group("match_connection");
    g.bench_function("hit-exact", |b| {
        b.iter(|| policy.match_connection(black_box("svc250.example0.com"), black_box(443)))
    });
    g.bench_function("hit-exact-mixed-case-trailing-dot", |b| {
        b.iter(|| policy.match_connection(black_box("SVC250.Example0.com."), black_box(443)))
    });
    g.bench_function("hit-wildcard", |b| {
        b.iter(|| policy.match_connection(black_box("a.cdn377.example.net"), black_box(443)))
    });
    g.bench_function("miss", |b| {
        b.iter(|| policy.match_connection(black_box("nothing.example.org"), black_box(443)))
    });
    g.bench_function("miss-idna", |b| {
        b.iter(|| policy.match_connection(black_box("bücher.example"), black_box(443)))
    });
    g.finish();

    let mut g = c.benchmark_group("match_request");
    g.bench_function("allow-third-rule", |b| {
        b.iter(|| {
            policy.match_request(
                black_box(id),
                black_box("GET"),
                black_box("/repos/o/r/pulls/7"),
                black_box(Some("per_page=50&state=open")),
            )
        })
    });
    g.bench_function("deny-first-rule", |b| {
        b.iter(|| {
            policy.match_request(
                black_box(id),
                black_box("DELETE"),
                black_box("/repos/o/r"),
                black_box(None),
            )
        })
    });
    g.finish();

    c.bench_function("compile-500-rules", |b| {
        let parsed = parse_policy(text.as_bytes()).expect("valid");
        b.iter(|| CompiledPolicy::compile(black_box(&parsed)))
    });
    c.bench_function("parse-500-rules", |b| {
        b.iter(|| parse_policy(black_box(text.as_bytes())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
