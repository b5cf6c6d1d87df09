//! TLS interception: the sandbox CA, leaf certificates per SNI, and the rustls
//! configurations of both sides of an inspected connection.
//!
//! Owns: generating the sandbox CA at start-up (ECDSA P-256, key only in this process's
//! memory, name-constrained to the hosts the policy inspects), rotating it at 2/3 of its
//! life or when the inspected host set changes, publishing `ca.pem` and `ca-bundle.pem`
//! (system roots + our CA) atomically in the shared dir, minting short-lived leaves per SNI
//! (bounded LRU keyed by CA generation and name), the agent-side `ServerConfig` (TLS 1.2/1.3,
//! ALPN h2 + http/1.1) and the upstream `ClientConfig` (webpki roots + system roots +
//! `--upstream-ca`, ALPN http/1.1).
//! Must never: write the CA private key anywhere, mint a leaf for a name the CA's name
//! constraints do not permit, or accept an upstream certificate that does not verify.

mod ca;
mod config;

pub use self::ca::CaStore;
pub use self::config::{Interceptor, TlsSettings};

/// Default lifetime of the sandbox CA.
pub const DEFAULT_CA_VALIDITY: &str = "24h";
/// Lifetime of a leaf certificate (capped by the CA's remaining lifetime).
pub const LEAF_VALIDITY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
/// Leaf certificates kept in memory.
pub const LEAF_CACHE_CAPACITY: usize = 1024;
/// System CA bundle appended before our CA in `ca-bundle.pem` and trusted upstream.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
