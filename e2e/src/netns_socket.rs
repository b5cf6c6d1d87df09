//! Sockets that live in a test namespace but are served from this (test) process.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole
//! life. [`tcp_listener_in`] creates the listener on a short-lived thread that first joins
//! the namespace (`setns(CLONE_NEWNET)`; only that thread moves), then hands the bound
//! listener back: an in-process test double (tokio, rustls) then serves inside e.g. the
//! "internet" namespace, reachable from the pod like any upstream.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use nix::sched::CloneFlags;

use crate::Netns;

/// A TCP listener bound to `addr` inside `ns` (an address that namespace owns).
pub fn tcp_listener_in(ns: &Netns, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let path = std::path::Path::new("/run/netns").join(ns.name());
    let name = ns.name().to_owned();
    std::thread::spawn(move || -> anyhow::Result<TcpListener> {
        let file = std::fs::File::open(&path)
            .with_context(|| format!("open {} (made by `ip netns add`)", path.display()))?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {name} (needs root)"))?;
        TcpListener::bind(addr).with_context(|| format!("bind {addr} in {name}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the setns thread panicked"))?
}
