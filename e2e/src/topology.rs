//! [`Topology`]: a "pod" namespace connected to an "internet" namespace by a veth pair.
//!
//! ```text
//!   pod ns                                     internet ns
//!   eth0 198.18.B.1/24  fd00:5a1:0:B::1/64 ─── eth0 198.18.B.2/24 (+ .3 .4 .5)
//!   default via 198.18.B.2 / fd00:5a1:0:B::2        fd00:5a1:0:B::2/64 (+ ::3 ::4 ::5)
//! ```
//!
//! `B` is a per-topology block derived from the PID and a process-wide counter, so tests
//! running in parallel (even in different test binaries) use different /24s of
//! 198.18.0.0/15. The internet namespace does not forward: anything the pod sends to an
//! address the internet namespace does not own is dropped there and never leaves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context;

use crate::Netns;

/// How many upstream ("internet") addresses each family gets.
pub const UPSTREAM_ADDRS: usize = 4;

/// The pod/internet pair. Drop order: pod first, then internet (both namespaces deleted).
#[derive(Debug)]
pub struct Topology {
    /// The pod's network namespace (capture rules go here; the agent runs here).
    pub pod: Netns,
    /// The "outside world": servers (nginx, dnsmasq, echo, UDP sink) run here.
    pub internet: Netns,
    block: u16,
}

impl Topology {
    /// Create both namespaces, the veth pair, addresses (IPv6 with `nodad`) and the pod's
    /// default routes (v4 and v6) via the internet side.
    pub fn new() -> anyhow::Result<Topology> {
        let pod = Netns::new("pod")?;
        let internet = Netns::new("net")?;
        // 512 /24s in 198.18.0.0/15; mix pid and counter so parallel binaries rarely collide
        // (and a collision would be harmless: every pair is its own isolated L2 segment).
        let serial = crate::netns::next_serial();
        let block = ((std::process::id().wrapping_mul(7) + serial) % 512) as u16;
        let topo = Topology {
            pod,
            internet,
            block,
        };
        topo.wire().context("wire pod <-> internet veth pair")?;
        Ok(topo)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let serial = crate::netns::next_serial();
        let tmp_a = format!("pa{}x{serial}", std::process::id() % 100_000);
        let tmp_b = format!("pb{}x{serial}", std::process::id() % 100_000);
        let out = std::process::Command::new("ip")
            .args(["link", "add", &tmp_a, "netns", self.pod.name()])
            .args(["type", "veth", "peer", "name", &tmp_b, "netns"])
            .arg(self.internet.name())
            .output()
            .context("ip link add veth")?;
        anyhow::ensure!(
            out.status.success(),
            "ip link add veth: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.pod
            .run(["ip", "link", "set", &tmp_a, "name", "eth0"])
            .ok_or_fail()?;
        self.internet
            .run(["ip", "link", "set", &tmp_b, "name", "eth0"])
            .ok_or_fail()?;
        let pod4 = format!("{}/24", self.pod_v4());
        let pod6 = format!("{}/64", self.pod_v6());
        self.pod
            .run(["ip", "addr", "add", &pod4, "dev", "eth0"])
            .ok_or_fail()?;
        self.pod
            .run(["ip", "-6", "addr", "add", &pod6, "dev", "eth0", "nodad"])
            .ok_or_fail()?;
        for i in 0..UPSTREAM_ADDRS {
            let v4 = format!("{}/24", self.upstream_v4(i));
            let v6 = format!("{}/64", self.upstream_v6(i));
            self.internet
                .run(["ip", "addr", "add", &v4, "dev", "eth0"])
                .ok_or_fail()?;
            self.internet
                .run(["ip", "-6", "addr", "add", &v6, "dev", "eth0", "nodad"])
                .ok_or_fail()?;
        }
        self.pod
            .run(["ip", "link", "set", "eth0", "up"])
            .ok_or_fail()?;
        self.internet
            .run(["ip", "link", "set", "eth0", "up"])
            .ok_or_fail()?;
        let gw4 = self.upstream_v4(0).to_string();
        let gw6 = self.upstream_v6(0).to_string();
        self.pod
            .run(["ip", "route", "add", "default", "via", &gw4])
            .ok_or_fail()?;
        self.pod
            .run(["ip", "-6", "route", "add", "default", "via", &gw6])
            .ok_or_fail()?;
        Ok(())
    }

    /// The per-topology block number (0..512).
    pub fn block(&self) -> u16 {
        self.block
    }

    fn v4(&self, host: u8) -> Ipv4Addr {
        let third = (self.block & 0xff) as u8;
        let second = 18 + (self.block >> 8) as u8;
        Ipv4Addr::new(198, second, third, host)
    }

    fn v6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x5a1, 0, self.block, 0, 0, 0, host)
    }

    /// The pod's IPv4 address on eth0.
    pub fn pod_v4(&self) -> Ipv4Addr {
        self.v4(1)
    }

    /// The pod's IPv6 address on eth0.
    pub fn pod_v6(&self) -> Ipv6Addr {
        self.v6(1)
    }

    /// Upstream IPv4 address number `i` (0..4) in the internet namespace; 0 is the gateway.
    pub fn upstream_v4(&self, i: usize) -> Ipv4Addr {
        self.v4(2 + (i % UPSTREAM_ADDRS) as u8)
    }

    /// Upstream IPv6 address number `i` (0..4) in the internet namespace; 0 is the gateway.
    pub fn upstream_v6(&self, i: usize) -> Ipv6Addr {
        self.v6(2 + (i % UPSTREAM_ADDRS) as u16)
    }

    /// Upstream address `i` of the given family.
    pub fn upstream(&self, i: usize, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.upstream_v6(i))
        } else {
            IpAddr::V4(self.upstream_v4(i))
        }
    }
}
