//! End-to-end test harness: network namespaces, veth pairs, real servers and clients.
//!
//! Everything here runs real programs in real network namespaces that the test itself
//! creates; traffic never leaves those namespaces. The pieces:
//!
//! * [`prereq`] — [`require_root_or_skip`] / [`require!`]: root + tools present, else skip
//!   (or FAIL under `CI=true`, naming the apt package to install).
//! * [`netns`] — [`Netns`]: a uniquely named namespace, deleted on drop (processes killed).
//! * [`topology`] — [`Topology`]: a "pod" namespace wired by a veth pair to an "internet"
//!   namespace that holds the upstream addresses (v4 from 198.18.0.0/15, v6 from fd00::/8),
//!   with default routes in the pod pointing at the internet side.
//! * [`process`] — [`run_in`], [`spawn_in`] (kill-on-drop [`Proc`]), [`as_agent`],
//!   [`as_uid`], [`wait_for_tcp_listen`], [`wait_until`].
//! * [`servers`] — [`Nginx`] (HTTP 80 / HTTPS 443, test CA, JSON access log),
//!   [`Dnsmasq`] (test names → internet addresses, pod resolv.conf), [`TcpEcho`],
//!   [`UdpSink`] (records every datagram), [`OrigDstListener`] (reports `SO_ORIGINAL_DST`).
//! * [`attack`] — [`attack::escape`] (socket tricks of a capability-less agent) and
//!   [`attack::PacketCapture`] (tcpdump on the outside: what really left the pod).
//! * [`bins`] — [`workspace_bin`]: path of a built workspace binary (`palisade-sidecar`, …).
//! * [`chain`] — the real gateway in the internet namespace ([`chain::Gateway`], admin API
//!   via curl), the agent's curl and the sidecar's metrics, for full-chain tests.
//! * [`netns_socket`] — [`netns_socket::tcp_listener_in`]: a listener bound inside a test
//!   namespace, served by an in-process double.
//! * [`podman`] — the rendered sandbox pod under `podman kube play`: images, a network the
//!   test owns (an internal bridge plus an upstream namespace), the pod and its teardown.
//! * [`spiffe`], [`oauth`] — test doubles for token grants: a fake SPIFFE Workload API
//!   (gRPC on a unix socket, ES256 JWT-SVIDs) and a fake OAuth token endpoint.
//!
//! Worked examples: `e2e/tests/fence.rs`.

pub mod attack;
pub mod bins;
pub mod chain;
pub mod netns;
pub mod netns_socket;
pub mod oauth;
pub mod podman;
pub mod prereq;
pub mod process;
pub mod servers;
pub mod spiffe;
pub mod topology;

pub use bins::{sidecar_argv, sidecar_bin, workspace_bin};
pub use netns::Netns;
pub use prereq::{in_ci, require_root_or_skip};
pub use process::{
    CmdOutput, Proc, as_agent, as_sidecar, as_uid, run_in, run_in_with_input, spawn_in,
    wait_for_tcp_listen, wait_for_udp_listen, wait_until,
};
pub use servers::{
    DEFAULT_TLS_NAMES, DnsRecord, Dnsmasq, Nginx, OrigDstListener, ProbeResult, TcpEcho, TestPki,
    UdpSink, default_records, probe,
};
pub use topology::Topology;

/// Agent UID/GID used by the tests (matches the product default).
pub const AGENT_UID: u32 = 1000;
/// Sidecar UID/GID used by the tests (matches the product default).
pub const SIDECAR_UID: u32 = 1337;
/// The python interpreter used for scripted clients and servers. A system path so that the
/// agent UID can execute it (a pyenv shim under /root is not reachable by UID 1000).
pub const PYTHON: &str = "/usr/bin/python3";
