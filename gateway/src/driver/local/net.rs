//! The host-side network plumbing of the local driver, through `ip`,
//! `bridge`, `iptables` and `sysctl` (iproute2, iptables): the bridge
//! sandboxes hang off, one namespace + veth per sandbox, and the optional
//! egress NAT. Every function is idempotent where cleanup needs it to be.
//! Must never: touch an interface, namespace or rule it did not create
//! (callers consult the ledger first); the only host firewall change is the
//! NAT of `--egress-nat`, tagged with [`NAT_COMMENT`].

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use ipnet::Ipv4Net;

use crate::driver::contract::DriverError;

/// Comment on every iptables rule `--egress-nat` adds.
pub const NAT_COMMENT: &str = "palisade up: egress nat";

/// Run a program, returning stdout; the error names the command and says what to install.
pub fn run(program: &str, args: &[&str]) -> Result<String, DriverError> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        let hint = match program {
            "ip" | "bridge" => "install iproute2",
            "iptables" => "install iptables",
            "sysctl" => "install procps",
            _ => "check PATH",
        };
        DriverError::failed(format!("cannot run `{program}`: {e}; {hint}"))
    })?;
    if !out.status.success() {
        return Err(DriverError::failed(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Does a network interface of this name exist (in the host namespace)?
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Does a named network namespace exist?
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// `/etc/netns/<ns>`: `ip netns exec` bind-mounts files here over `/etc`.
pub fn etc_netns_dir(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Create the bridge with the gateway address (first host of `subnet`).
pub fn create_bridge(name: &str, subnet: Ipv4Net) -> Result<(), DriverError> {
    let addr = format!("{}/{}", gateway_ip(subnet), subnet.prefix_len());
    run("ip", &["link", "add", name, "type", "bridge"])?;
    let rest = (|| {
        run("ip", &["addr", "add", &addr, "dev", name])?;
        run("ip", &["link", "set", name, "up"])?;
        Ok(())
    })();
    if rest.is_err() {
        let _ = run("ip", &["link", "del", name]);
    }
    rest
}

pub fn delete_link(name: &str) -> Result<(), DriverError> {
    if link_exists(name) {
        // A veth also goes away with its peer's namespace, maybe meanwhile.
        match run("ip", &["link", "del", name]) {
            Err(_) if !link_exists(name) => {}
            other => other.map(|_| ())?,
        }
    }
    Ok(())
}

/// The bridge's (and the sandboxes' default gateway) address.
pub fn gateway_ip(subnet: Ipv4Net) -> Ipv4Addr {
    let base = u32::from(subnet.network());
    Ipv4Addr::from(base + 1)
}

/// One sandbox's namespace and link.
#[derive(Debug, Clone)]
pub struct SandboxNet<'a> {
    pub netns: &'a str,
    pub veth_host: &'a str,
    pub veth_peer: &'a str,
    pub bridge: &'a str,
    pub subnet: Ipv4Net,
    pub ip: Ipv4Addr,
}

/// Namespace, loopback up, veth into the bridge (isolated from the other
/// sandboxes' ports), address, default route via the bridge.
pub fn create_sandbox_net(n: &SandboxNet<'_>) -> Result<(), DriverError> {
    run("ip", &["netns", "add", n.netns])?;
    let ns = n.netns;
    let addr = format!("{}/{}", n.ip, n.subnet.prefix_len());
    let gw = gateway_ip(n.subnet).to_string();
    run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    run(
        "ip",
        &[
            "link",
            "add",
            n.veth_host,
            "type",
            "veth",
            "peer",
            "name",
            n.veth_peer,
            "netns",
            ns,
        ],
    )?;
    run(
        "ip",
        &["-n", ns, "link", "set", n.veth_peer, "name", "eth0"],
    )?;
    run("ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
    run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", ns, "route", "add", "default", "via", &gw])?;
    run("ip", &["link", "set", n.veth_host, "master", n.bridge])?;
    run(
        "bridge",
        &["link", "set", "dev", n.veth_host, "isolated", "on"],
    )?;
    run("ip", &["link", "set", n.veth_host, "up"])?;
    Ok(())
}

/// PIDs of every process in a namespace.
pub fn netns_pids(ns: &str) -> Vec<i32> {
    if !netns_exists(ns) {
        return Vec::new();
    }
    run("ip", &["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kill whatever still runs in the namespace, then delete it, its veth and
/// its `/etc/netns` dir. Idempotent.
pub fn delete_sandbox_net(ns: &str, veth_host: &str) -> Result<(), DriverError> {
    for _ in 0..50 {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut first_err = None;
    if netns_exists(ns)
        && let Err(e) = run("ip", &["netns", "del", ns])
    {
        first_err = Some(e);
    }
    if let Err(e) = delete_link(veth_host) {
        first_err.get_or_insert(e);
    }
    let etc = etc_netns_dir(ns);
    if etc.exists()
        && let Err(e) = std::fs::remove_dir_all(&etc)
    {
        first_err.get_or_insert(DriverError::failed(format!(
            "cannot remove {}: {e}",
            etc.display()
        )));
    }
    first_err.map_or(Ok(()), Err)
}

/// The iptables rules of `--egress-nat` (table, rule spec), in insert order.
fn nat_rules(subnet: Ipv4Net, bridge: &str) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let net = subnet.to_string();
    vec![
        (
            "nat",
            "POSTROUTING",
            s(&[
                "-s",
                net.as_str(),
                "!",
                "-o",
                bridge,
                "-m",
                "comment",
                "--comment",
                NAT_COMMENT,
                "-j",
                "MASQUERADE",
            ]),
        ),
        (
            "filter",
            "FORWARD",
            s(&[
                "-i",
                bridge,
                "!",
                "-o",
                bridge,
                "-m",
                "comment",
                "--comment",
                NAT_COMMENT,
                "-j",
                "ACCEPT",
            ]),
        ),
        (
            "filter",
            "FORWARD",
            s(&[
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-m",
                "comment",
                "--comment",
                NAT_COMMENT,
                "-j",
                "ACCEPT",
            ]),
        ),
    ]
}

/// Add the NAT + forward rules; returns the previous `net.ipv4.ip_forward`.
pub fn add_egress_nat(subnet: Ipv4Net, bridge: &str) -> Result<String, DriverError> {
    let before = run("sysctl", &["-n", "net.ipv4.ip_forward"])?
        .trim()
        .to_owned();
    for (table, chain, spec) in nat_rules(subnet, bridge) {
        let mut args = vec!["-w", "-t", table, "-I", chain, "1"];
        args.extend(spec.iter().map(String::as_str));
        run("iptables", &args)?;
    }
    run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
    Ok(before)
}

/// Remove the NAT + forward rules (each as often as it is present) and
/// restore `net.ipv4.ip_forward`.
pub fn remove_egress_nat(
    subnet: Ipv4Net,
    bridge: &str,
    ip_forward_before: Option<&str>,
) -> Result<(), DriverError> {
    for (table, chain, spec) in nat_rules(subnet, bridge) {
        let mut check = vec!["-w", "-t", table, "-C", chain];
        check.extend(spec.iter().map(String::as_str));
        let mut delete = vec!["-w", "-t", table, "-D", chain];
        delete.extend(spec.iter().map(String::as_str));
        for _ in 0..16 {
            if run("iptables", &check).is_err() {
                break;
            }
            run("iptables", &delete)?;
        }
    }
    if let Some(v) = ip_forward_before
        && (v == "0" || v == "1")
    {
        run("sysctl", &["-q", "-w", &format!("net.ipv4.ip_forward={v}")])?;
    }
    Ok(())
}

/// `nameserver` lines for a sandbox's resolv.conf: the given servers, or
/// the host's non-loopback ones (a loopback resolver is unreachable from
/// inside a namespace).
pub fn resolv_conf(servers: &[std::net::IpAddr]) -> Option<String> {
    let servers: Vec<String> = if servers.is_empty() {
        ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("nameserver"))
                    .filter_map(|s| s.trim().parse::<std::net::IpAddr>().ok())
                    .filter(|ip| !ip.is_loopback())
                    .map(|ip| ip.to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    } else {
        servers.iter().map(ToString::to_string).collect()
    };
    if servers.is_empty() {
        return None;
    }
    let mut seen = std::collections::BTreeSet::new();
    let lines: String = servers
        .into_iter()
        .filter(|s| seen.insert(s.clone()))
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    Some(format!(
        "# written by palisade up for this sandbox\n{lines}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_the_first_host() {
        let net: Ipv4Net = "10.231.0.0/16".parse().unwrap();
        assert_eq!(gateway_ip(net), Ipv4Addr::new(10, 231, 0, 1));
    }

    #[test]
    fn nat_rules_are_tagged_and_scoped_to_the_subnet() {
        let net: Ipv4Net = "10.231.0.0/16".parse().unwrap();
        for (_, _, spec) in nat_rules(net, "palisade0") {
            assert!(spec.iter().any(|s| s == NAT_COMMENT), "{spec:?}");
            assert!(spec.iter().any(|s| s == "palisade0"), "{spec:?}");
        }
    }

    #[test]
    fn explicit_nameservers_win() {
        let text = resolv_conf(&["192.0.2.53".parse().unwrap()]).unwrap();
        assert!(text.ends_with("nameserver 192.0.2.53\n"), "{text}");
    }
}
