//! One module per cross-cutting concern of the API stack; the order they
//! run in is stated once, in [`crate::server::stack`].

pub mod authz;
pub mod body_limit;
pub mod concurrency;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod timeout;
pub mod trace;
