//! Idle upstream connections of inspected traffic, shared by all agent connections.
//!
//! Owns: keeping verified HTTP/1.1-over-TLS upstream connections for reuse, keyed by
//! (dialled address, TLS server name, credential name), bounded per key and in total.
//! Must never: hand out a connection to an address the current decision did not produce
//! (callers pass the decision's addresses), or share a connection between requests that
//! carry different credentials.

use std::collections::HashMap;
use std::net::SocketAddr;

use hyper::client::conn::http1::SendRequest;
use parking_lot::Mutex;

use super::UpstreamBody;

/// Idle connections kept per key. Upstream connections are HTTP/1.1, one request at a time,
/// so this must cover the concurrency one host sees: an HTTP/2 agent easily has 100 streams
/// in flight (the server's stream limit), and every request that finds no idle connection
/// pays a TCP and TLS handshake (64 made `h2load -c10 -m10` open a connection for one
/// request in twelve).
const MAX_IDLE_PER_KEY: usize = 256;
/// Idle connections kept in total (each holds TLS state and buffers, some tens of KiB).
const MAX_IDLE: usize = 1024;
/// Keys kept at all (bounds memory if the policy names many hosts).
const MAX_KEYS: usize = 256;

/// Which requests may share a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub sni: String,
    pub credential: Option<String>,
}

/// The idle connections.
#[derive(Default)]
pub struct UpstreamPool {
    idle: Mutex<HashMap<PoolKey, Vec<SendRequest<UpstreamBody>>>>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool").finish_non_exhaustive()
    }
}

impl UpstreamPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// An idle, still open connection to one of `dial` for this server name and credential.
    pub fn take(
        &self,
        dial: &[SocketAddr],
        sni: &str,
        credential: Option<&str>,
    ) -> Option<(PoolKey, SendRequest<UpstreamBody>)> {
        let mut idle = self.idle.lock();
        for addr in dial {
            let key = PoolKey {
                addr: *addr,
                sni: sni.to_owned(),
                credential: credential.map(str::to_owned),
            };
            if let Some(list) = idle.get_mut(&key) {
                while let Some(sender) = list.pop() {
                    if !sender.is_closed() && sender.is_ready() {
                        return Some((key, sender));
                    }
                }
                idle.remove(&key);
            }
        }
        None
    }

    /// Keep a connection that finished its exchange.
    pub fn put(&self, key: PoolKey, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() >= MAX_KEYS && !idle.contains_key(&key) {
            idle.retain(|_, list| {
                list.retain(|s| !s.is_closed());
                !list.is_empty()
            });
            if idle.len() >= MAX_KEYS {
                return;
            }
        }
        let total: usize = idle.values().map(Vec::len).sum();
        let list = idle.entry(key).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < MAX_IDLE_PER_KEY && total < MAX_IDLE {
            list.push(sender);
        }
    }
}
