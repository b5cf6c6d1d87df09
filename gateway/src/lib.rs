//! The Palisade gateway: the slim control plane that registers sandboxes,
//! mints and refreshes their JWTs, and stores and serves their policies.
//!
//! Where things live:
//! * [`server`] — listeners, TLS, connection handling; [`server::stack`] is
//!   THE middleware stack, top to bottom.
//! * [`layers`] — one module per cross-cutting concern of that stack.
//! * [`authn`] — the authentication chain producing a [`principal::Principal`].
//! * [`routes`] — the route table with each route's grants, and authorization.
//! * [`handlers`] — the router and the handlers.
//! * [`sessions`] — sidecar session streams (policy, credentials, relay
//!   requests) and the exec relay.
//! * [`keys`], [`tokens`] — the rotating Ed25519 key set and sandbox JWTs.
//! * [`store`] — persistent state behind the `Store` trait (embedded redb).
//! * [`metrics`], [`config`] — Prometheus metrics, typed configuration
//!   ([`duration`]: durations as operators write them).
//! * [`driver`] — sandbox lifecycle (the local driver behind `palisade up`).
//! * [`pod`] — the sandbox pod renderer (`sandbox render`, `inject`).

#![forbid(unsafe_code)]

pub mod authn;
pub mod client;
pub mod config;
pub mod crd;
pub mod driver;
pub mod duration;
pub mod fsutil;
pub mod handlers;
pub mod http;
pub mod keys;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod pod;
pub mod podsecurity;
pub mod principal;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod tokens;

/// A random (version 4) UUID from the thread-local CSPRNG. Request ids and
/// `jti`s are made for every request; `Uuid::new_v4` would make a
/// `getrandom` system call for each.
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}
