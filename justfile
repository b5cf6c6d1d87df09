# Palisade developer commands. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The full test suite: unit, integration, policy examples, and e2e in network namespaces (needs root).
test: build check-policies
    cargo test -q --workspace --doc
    cargo nextest run --workspace --no-fail-fast

# Build every binary the e2e tests run (and the static shim the images carry).
build:
    cargo build --workspace --all-targets
    RUSTFLAGS='-C target-feature=+crt-static' cargo build -p palisade-shim --bin palisade-shim --target "$(rustc -vV | sed -n 's/^host: //p')"

# Every example policy must pass `palisade policy check`.
check-policies:
    cargo run -q -p palisade-gateway --bin palisade -- policy check policies/examples/*.yaml

# Lints as CI runs them: format, clippy, the dependency graph (licences, duplicate
# versions, sources: deny.toml), and no declared dependency left unused.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo deny --log-level error check bans licenses sources
    cargo machete
    scripts/check-deps

# Format the workspace.
fmt:
    cargo fmt --all

# Container images (gateway, sidecar, shim) with buildah FROM scratch, nothing pulled:
# `just images` (release) or `just images --debug` (the debug binaries). See docs/images.md.
images *ARGS:
    scripts/images {{ARGS}}

# Benchmarks: the policy matcher (criterion; JSON under target/criterion) and the
# inspecting proxy path vs direct connections (h2load + wrk in network namespaces; needs root).
bench:
    cargo bench -p palisade-policy --bench matcher
    cargo test --release -p palisade-e2e --test l7 -- --ignored --nocapture bench

# Gateway load benchmark: token refresh/issue and policy GET (wrk; JSON under target/bench/gateway.json).
bench-gateway:
    gateway/bench/run.sh

# Regenerate the checked-in JSON Schema for policies.
schema:
    UPDATE_SCHEMA=1 cargo test -q -p palisade-policy schema

# The main job: `palisade up` + a sandbox + a local HTTPS echo upstream — an injected
# credential the agent never sees, a denied host, a denied method, the metrics (root).
up:
    scripts/demo
