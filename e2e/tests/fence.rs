//! Capture + fence end to end: real iptables/nftables rules installed by
//! `palisade-sidecar init` in a pod namespace, real clients (python, curl, ping, dig) as the
//! agent UID with every capability dropped, real servers in an "internet" namespace.
//!
//! Every fence test runs for each backend: iptables-legacy, iptables-nft and native nft.
//! Every test has a control: what must be refused with the rules is first shown to work
//! without them (or the same client is shown to work for an allowed destination).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::time::Duration;

use palisade_e2e::attack::{PacketCapture, escape};
use palisade_e2e::process::as_sidecar;
use palisade_e2e::*;

const OUTBOUND: u16 = 15001;
const DNS: u16 = 15053;

/// Tools every fence test needs, per backend.
fn tools(backend: &str) -> Vec<&'static str> {
    let mut t = vec!["python3", "ss", "curl"];
    match backend {
        "nft" => t.push("nft"),
        "iptables-legacy" => t.extend(["iptables-legacy-restore", "iptables-legacy-save"]),
        _ => t.extend(["iptables-nft-restore", "iptables-nft-save"]),
    }
    t
}

macro_rules! prereq {
    ($backend:expr $(, $extra:expr)*) => {
        let mut needed = tools($backend);
        let extra: &[&str] = &[$($extra),*];
        needed.extend_from_slice(extra);
        if !require_root_or_skip(&needed) {
            return;
        }
    };
}

fn init(topo: &Topology, backend: &str, extra: &[&str]) -> CmdOutput {
    let mut args = vec!["init", "--backend", backend];
    args.extend_from_slice(extra);
    let out = topo.pod.run(sidecar_argv(&args));
    out.assert_success();
    out
}

/// The ruleset as the backend shows it, without counters and comments. Tables that hold no
/// rules at all are dropped: iptables-save lists a table as soon as the kernel has created
/// it for the namespace, which is not a rule of anyone's.
fn dump(ns: &Netns, backend: &str) -> String {
    if backend == "nft" {
        return ns
            .run(["nft", "list", "ruleset"])
            .ok_or_fail()
            .unwrap()
            .stdout;
    }
    let variant = backend.trim_start_matches("iptables-");
    let mut all = String::new();
    for fam in ["iptables", "ip6tables"] {
        let out = ns
            .run([format!("{fam}-{variant}-save")])
            .ok_or_fail()
            .unwrap();
        let mut table = Vec::new();
        for line in out.stdout.lines().filter(|l| !l.starts_with('#')) {
            let line = match line.rfind(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            table.push(line.to_string());
            if line == "COMMIT" {
                let has_content = table
                    .iter()
                    .any(|l| l.starts_with("-A") || l.starts_with(":PALISADE"));
                if has_content {
                    all.push_str(&format!("[{fam}]\n{}\n", table.join("\n")));
                }
                table.clear();
            }
        }
    }
    all
}

fn is_refusal(errno: &Option<String>) -> bool {
    matches!(
        errno.as_deref(),
        Some("ECONNREFUSED" | "EPERM" | "EACCES" | "EHOSTUNREACH")
    )
}

// ---------------------------------------------------------------------------------------

fn udp_to_outside_is_refused(backend: &str) {
    prereq!(backend);
    let topo = Topology::new().unwrap();
    let sink = UdpSink::start(&topo.internet, 9999).unwrap();
    let v4 = topo.upstream_v4(0).to_string();
    let v6 = topo.upstream_v6(0).to_string();
    // Control: without rules both families arrive.
    for dest in [&v4, &v6] {
        let r = probe(&topo.pod, Some(AGENT_UID), &["udp", dest, "9999"]);
        assert!(
            r.ok,
            "control: UDP to {dest} should work without rules: {r:?}"
        );
    }
    assert_eq!(sink.received().len(), 2);

    init(&topo, backend, &[]);
    for dest in [&v4, &v6] {
        let r = probe(&topo.pod, Some(AGENT_UID), &["udp", dest, "9999"]);
        assert!(!r.ok, "UDP to {dest} must be refused: {r:?}");
        assert!(
            is_refusal(&r.errno),
            "UDP to {dest}: want a clear errno, got {r:?}"
        );
    }
    assert_eq!(sink.received().len(), 2, "nothing new may arrive upstream");
}

fn icmp_echo_is_refused(backend: &str) {
    prereq!(backend, "ping", "tcpdump");
    let topo = Topology::new().unwrap();
    // Let unprivileged UIDs open ICMP datagram sockets (per namespace), so the agent can
    // ping at all without capabilities; the fence is what must stop it.
    topo.pod
        .sysctl("net.ipv4.ping_group_range", "0 2147483647")
        .unwrap();
    // A copy of ping without its file capabilities (std::fs::copy drops xattrs): exec of a
    // capability-carrying binary fails outright with an empty bounding set, and a hardened
    // agent image would not carry one either.
    let ping = topo.pod.workdir().join("ping");
    std::fs::copy(prereq::find_tool("ping").unwrap(), &ping).unwrap();
    let ping = ping.display().to_string();
    let v4 = topo.upstream_v4(0).to_string();
    let v6 = topo.upstream_v6(0).to_string();
    let mut control = PacketCapture::start(&topo.internet, "eth0").unwrap();
    for dest in [&v4, &v6] {
        let out = topo
            .pod
            .run(as_agent(&[&ping, "-n", "-c", "1", "-W", "3", dest]));
        assert!(out.success(), "control: ping {dest} without rules: {out}");
    }
    let seen = control.packets();
    assert_eq!(
        seen.iter().filter(|l| l.contains("echo request")).count(),
        2,
        "control: the capture sees echo requests: {seen:#?}"
    );

    init(&topo, backend, &[]);
    let mut capture = PacketCapture::start(&topo.internet, "eth0").unwrap();
    for dest in [&v4, &v6] {
        let out = topo
            .pod
            .run(as_agent(&[&ping, "-n", "-c", "1", "-W", "3", dest]));
        assert!(!out.success(), "ping {dest} must fail: {out}");
        let r = probe(&topo.pod, Some(AGENT_UID), &["icmp", dest]);
        // As docs/capture.md says: IPv4 ping sockets see the fence's verdict as EPERM from
        // send(); IPv6 ping sockets do not (the kernel ignores the netfilter verdict there),
        // so send() returns, and the fence's "administratively prohibited" arrives as
        // EACCES on the next receive. Either way the echo never leaves (capture below).
        let (stage, errno) = if dest == &v4 {
            ("send", "EPERM")
        } else {
            ("recv", "EACCES")
        };
        assert_eq!(
            (r.ok, r.stage.as_str(), r.errno.as_deref()),
            (false, stage, Some(errno)),
            "ICMP echo to {dest}: {r:?}"
        );
    }
    let echoes: Vec<String> = capture
        .packets()
        .into_iter()
        .filter(|l| l.contains("echo request"))
        .collect();
    assert!(echoes.is_empty(), "echo requests left the pod: {echoes:#?}");
}

fn tcp_is_redirected_with_original_destination(backend: &str) {
    prereq!(backend);
    let topo = Topology::new().unwrap();
    let listener = OrigDstListener::start(&topo.pod, OUTBOUND, SIDECAR_UID).unwrap();
    let _echo = TcpEcho::start(&topo.internet, 7).unwrap();
    let v4 = topo.upstream_v4(1).to_string();
    let v6 = topo.upstream_v6(1).to_string();
    // Control: without rules the agent reaches the real echo server.
    let r = probe(&topo.pod, Some(AGENT_UID), &["tcp", &v4, "7", "3", "hi\n"]);
    assert!(r.ok && r.recv == "hi\n", "control: {r:?}");

    init(&topo, backend, &[]);
    let r = probe(&topo.pod, Some(AGENT_UID), &["tcp", &v4, "7"]);
    assert_eq!(r.recv, format!("origdst {v4}:7\n"), "{r:?}");
    let r = probe(&topo.pod, Some(AGENT_UID), &["tcp", &v6, "443"]);
    assert_eq!(r.recv, format!("origdst [{v6}]:443\n"), "{r:?}");
    // curl, a real client, is redirected the same way (it sees our listener's line).
    let url = format!("http://{v4}:8080/");
    let out = topo.pod.run(as_agent(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "--http0.9",
        &url,
    ]));
    assert!(out.stdout.contains(&format!("origdst {v4}:8080")), "{out}");

    let conns = listener.connections();
    assert_eq!(conns.len(), 3, "{conns:?}\n{}", listener.proc.describe());
    assert_eq!(conns[0]["family"], 4);
    // REDIRECT rewrites only the destination (to loopback); the source stays the pod's.
    assert_eq!(conns[0]["peer"], topo.pod_v4().to_string());
    assert_eq!(conns[0]["orig_dst"], format!("{v4}:7"));
    assert_eq!(conns[1]["family"], 6);
    assert_eq!(conns[1]["peer"], topo.pod_v6().to_string());
    assert_eq!(conns[1]["orig_dst"], format!("[{v6}]:443"));
}

fn dns_is_redirected_to_policy_dns(backend: &str) {
    prereq!(backend);
    let topo = Topology::new().unwrap();
    let upstream_dns = UdpSink::start(&topo.internet, 53).unwrap();
    let policy_dns = {
        // A UDP sink on 15053 run as the sidecar UID stands in for the policy DNS server.
        let path = servers::script(&topo.pod, "udp_sink.py").unwrap();
        topo.pod
            .spawn(as_sidecar(&[PYTHON, &path.display().to_string(), "15053"]))
            .unwrap()
    };
    wait_for_udp_listen(&topo.pod, DNS, Duration::from_secs(20)).unwrap();
    let up = topo.upstream_v4(0).to_string();
    let r = probe(&topo.pod, Some(AGENT_UID), &["udp", &up, "53"]);
    assert!(r.ok, "control: {r:?}");
    assert_eq!(upstream_dns.received().len(), 1);

    init(&topo, backend, &[]);
    for dest in [up.as_str(), "127.0.0.53", &topo.upstream_v6(0).to_string()] {
        let r = probe(&topo.pod, Some(AGENT_UID), &["udp", dest, "53"]);
        assert!(r.ok && r.recv == "palisade-probe\n", "DNS to {dest}: {r:?}");
    }
    assert_eq!(
        upstream_dns.received().len(),
        1,
        "DNS must not reach upstream"
    );
    let seen = policy_dns.stdout();
    assert_eq!(seen.matches("\"from\"").count(), 3, "{seen}");
    // The sidecar's own DNS goes out directly.
    let r = probe(&topo.pod, Some(SIDECAR_UID), &["udp", &up, "53"]);
    assert!(r.ok, "{r:?}");
    assert_eq!(upstream_dns.received().len(), 2);
}

fn sidecar_ports_refused_but_loopback_services_work(backend: &str) {
    prereq!(backend);
    let topo = Topology::new().unwrap();
    // Something really listens on the admin port, so a refusal is the fence, not absence.
    let _admin = OrigDstListener::start(&topo.pod, 15020, SIDECAR_UID).unwrap();
    let http_root = topo.pod.workdir().join("www");
    std::fs::create_dir_all(&http_root).unwrap();
    std::fs::write(http_root.join("index.html"), "local service\n").unwrap();
    let root = http_root.display().to_string();
    let _local = topo
        .pod
        .spawn(as_agent(&[
            PYTHON,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            &root,
            "8000",
        ]))
        .unwrap();
    wait_for_tcp_listen(&topo.pod, 8000, Duration::from_secs(20)).unwrap();
    let r = probe(&topo.pod, Some(AGENT_UID), &["tcp", "127.0.0.1", "15020"]);
    assert!(r.ok, "control: {r:?}");

    init(&topo, backend, &[]);
    for dest in ["127.0.0.1", "::1", &topo.pod_v4().to_string()] {
        let r = probe(&topo.pod, Some(AGENT_UID), &["tcp", dest, "15020"]);
        assert_eq!(
            r.errno.as_deref(),
            Some("ECONNREFUSED"),
            "{dest}:15020 {r:?}"
        );
    }
    let r = probe(&topo.pod, Some(AGENT_UID), &["tcp", "127.0.0.1", "15001"]);
    assert_eq!(
        r.errno.as_deref(),
        Some("ECONNREFUSED"),
        "direct 15001: {r:?}"
    );
    // The sidecar itself still reaches its admin port.
    let r = probe(&topo.pod, Some(SIDECAR_UID), &["tcp", "127.0.0.1", "15020"]);
    assert!(r.ok, "{r:?}");
    // A loopback service of the agent's own keeps working.
    let out = topo.pod.run(as_agent(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:8000/",
    ]));
    out.assert_success();
    assert_eq!(out.stdout, "local service\n");
}

fn sidecar_uid_goes_out_directly_and_dead_sidecar_means_refused(backend: &str) {
    prereq!(backend, "nginx", "openssl");
    let topo = Topology::new().unwrap();
    let nginx = Nginx::start(&topo, DEFAULT_TLS_NAMES).unwrap();
    init(&topo, backend, &[]);
    let url = format!("http://{}/direct", topo.upstream_v4(0));
    let out = topo
        .pod
        .run(as_sidecar(&["curl", "-sS", "--max-time", "10", &url]));
    out.assert_success();
    // Forget every IPv6 neighbour: the next v6 connection needs neighbour discovery, whose
    // packets come from the kernel's own socket (not the sidecar UID) and must pass the fence.
    topo.pod
        .run(["ip", "-6", "neigh", "flush", "all"])
        .assert_success();
    let url6 = format!("http://[{}]/direct6", topo.upstream_v6(0));
    let out = topo
        .pod
        .run(as_sidecar(&["curl", "-sS", "--max-time", "10", &url6]));
    out.assert_success();
    let reqs = nginx.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0]["remote_addr"], topo.pod_v4().to_string());

    // Nothing listens on 15001: the agent is refused at once — no timeout, no egress.
    for dest in [
        topo.upstream_v4(0).to_string(),
        topo.upstream_v6(0).to_string(),
    ] {
        let r = probe(&topo.pod, Some(AGENT_UID), &["tcp", &dest, "80", "10"]);
        assert_eq!(r.stage, "connect", "{r:?}");
        assert_eq!(r.errno.as_deref(), Some("ECONNREFUSED"), "{r:?}");
    }
    let out = topo
        .pod
        .run(as_agent(&["curl", "-sS", "--max-time", "10", &url]));
    assert_eq!(
        out.code(),
        Some(7),
        "curl: couldn't connect expected: {out}"
    );
    assert_eq!(nginx.requests().len(), 2, "the agent must not reach nginx");
}

fn exclusions_bypass_capture_and_fence(backend: &str) {
    prereq!(backend);
    let topo = Topology::new().unwrap();
    let _listener = OrigDstListener::start(&topo.pod, OUTBOUND, SIDECAR_UID).unwrap();
    let _echo = TcpEcho::start(&topo.internet, 7).unwrap();
    let sink = UdpSink::start(&topo.internet, 9999).unwrap();
    let excluded_host = topo.upstream_v4(3).to_string();
    let excluded_v6 = format!("{}/128", topo.upstream_v6(3));
    let cidrs = format!("{excluded_host}/32,{excluded_v6}");
    init(
        &topo,
        backend,
        &[
            "--exclude-outbound-ports",
            "7,9999",
            "--exclude-outbound-cidrs",
            &cidrs,
        ],
    );
    let v4 = topo.upstream_v4(0).to_string();
    // Excluded port: reaches the real echo server (tcp) and the sink (udp).
    let r = probe(&topo.pod, Some(AGENT_UID), &["tcp", &v4, "7", "3", "x\n"]);
    assert_eq!(r.recv, "x\n", "{r:?}");
    let r = probe(&topo.pod, Some(AGENT_UID), &["udp", &v4, "9999"]);
    assert!(r.ok, "{r:?}");
    // Excluded CIDR: any port goes direct (the echo server also listens on every address).
    let r = probe(&topo.pod, Some(AGENT_UID), &["udp", &excluded_host, "9999"]);
    assert!(r.ok, "{r:?}");
    let v6_host = topo.upstream_v6(3).to_string();
    let r = probe(
        &topo.pod,
        Some(AGENT_UID),
        &["tcp", &v6_host, "7", "3", "y\n"],
    );
    assert_eq!(r.recv, "y\n", "{r:?}");
    assert_eq!(sink.received().len(), 2);
    // Not excluded: still redirected.
    let r = probe(&topo.pod, Some(AGENT_UID), &["tcp", &v4, "8"]);
    assert_eq!(r.recv, format!("origdst {v4}:8\n"), "{r:?}");
    let r = probe(&topo.pod, Some(AGENT_UID), &["udp", &v4, "9998"]);
    assert!(is_refusal(&r.errno), "{r:?}");
}

fn validate_fails_without_rules_and_passes_with_them(backend: &str) {
    prereq!(backend);
    let topo = Topology::new().unwrap();
    let validate = as_agent(&sidecar_argv(&["validate", "--timeout-secs", "2"]));
    let out = topo.pod.run(&validate);
    assert!(
        matches!(out.code(), Some(2 | 3)),
        "validate without rules must fail with 2 or 3: {out}"
    );
    assert!(out.stdout.contains("FAIL"), "{out}");

    init(&topo, backend, &[]);
    let out = topo.pod.run(&validate);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout.starts_with("palisade-sidecar validate: OK"),
        "{out}"
    );
    assert!(
        out.stdout.contains("redirected") && out.stdout.contains("refused"),
        "{out}"
    );

    // Remove only the fence: redirect still works, so validate must report the fence (3).
    if backend == "nft" {
        topo.pod
            .run(["nft", "delete", "chain", "inet", "palisade", "fence"])
            .assert_success();
    } else {
        let variant = backend.trim_start_matches("iptables-");
        for fam in ["iptables", "ip6tables"] {
            topo.pod
                .run([
                    format!("{fam}-{variant}").as_str(),
                    "-D",
                    "OUTPUT",
                    "-m",
                    "comment",
                    "--comment",
                    "palisade: fence",
                    "-j",
                    "PALISADE_FENCE",
                ])
                .assert_success();
        }
    }
    let out = topo.pod.run(&validate);
    assert_eq!(out.code(), Some(3), "{out}");

    // Validate as the sidecar UID is an operator error (exit 1), never a pass.
    let out = topo.pod.run(as_sidecar(&sidecar_argv(&[
        "validate",
        "--timeout-secs",
        "1",
    ])));
    assert_eq!(out.code(), Some(1), "{out}");
}

fn rules_idempotent_cleanup_exact_and_dry_run_inert(backend: &str) {
    prereq!(backend);
    let topo = Topology::new().unwrap();
    let before = dump(&topo.pod, backend);

    let dry = topo
        .pod
        .run(sidecar_argv(&["init", "--backend", backend, "--dry-run"]));
    dry.assert_success();
    let marker = if backend == "nft" {
        "table inet palisade {"
    } else {
        "-A PALISADE_FENCE"
    };
    assert!(dry.stdout.contains(marker), "{dry}");
    assert!(dry.stdout.contains("IPv6") || backend == "nft", "{dry}");
    assert_eq!(
        dump(&topo.pod, backend),
        before,
        "--dry-run changed the rules"
    );

    init(&topo, backend, &[]);
    let first = dump(&topo.pod, backend);
    assert_ne!(first, before);
    assert!(first.contains("palisade: fence"), "{first}");
    init(&topo, backend, &[]);
    assert_eq!(
        dump(&topo.pod, backend),
        first,
        "second init changed the rules"
    );

    // Someone else's rule survives cleanup untouched.
    let foreign = if backend == "nft" {
        topo.pod
            .run(["nft", "add", "table", "inet", "other"])
            .assert_success();
        topo.pod
            .run(["nft", "list", "ruleset"])
            .stdout
            .contains("table inet other")
    } else {
        let variant = backend.trim_start_matches("iptables-");
        topo.pod
            .run([
                &format!("iptables-{variant}"),
                "-A",
                "OUTPUT",
                "-d",
                "192.0.2.77",
                "-j",
                "ACCEPT",
            ])
            .assert_success();
        true
    };
    assert!(foreign);
    let with_foreign = dump(&topo.pod, backend);
    let out = topo.pod.run(sidecar_argv(&["cleanup"]));
    out.assert_success();
    let after = dump(&topo.pod, backend);
    assert!(!after.contains("palisade"), "{after}");
    if backend == "nft" {
        assert_eq!(after, "table inet other {\n}\n");
        topo.pod
            .run(["nft", "delete", "table", "inet", "other"])
            .assert_success();
    } else {
        assert!(
            after.contains("-A OUTPUT -d 192.0.2.77/32 -j ACCEPT"),
            "{after}"
        );
        let variant = backend.trim_start_matches("iptables-");
        topo.pod
            .run([
                &format!("iptables-{variant}"),
                "-D",
                "OUTPUT",
                "-d",
                "192.0.2.77",
                "-j",
                "ACCEPT",
            ])
            .assert_success();
    }
    assert_ne!(with_foreign, after);
    assert_eq!(
        dump(&topo.pod, backend),
        before,
        "cleanup left something behind"
    );
    // Cleanup again is a no-op, and init after cleanup works again.
    topo.pod.run(sidecar_argv(&["cleanup"])).assert_success();
    init(&topo, backend, &[]);
    assert_eq!(dump(&topo.pod, backend), first);
}

fn backends_are_never_mixed(backend: &str) {
    prereq!(
        backend,
        "nft",
        "iptables-nft-restore",
        "iptables-legacy-restore"
    );
    let topo = Topology::new().unwrap();
    init(&topo, backend, &[]);
    let rules = dump(&topo.pod, backend);
    for other in ["iptables-legacy", "iptables-nft", "nft"] {
        if other == backend {
            continue;
        }
        let out = topo.pod.run(sidecar_argv(&["init", "--backend", other]));
        assert_eq!(out.code(), Some(1), "{out}");
        assert!(out.stderr.contains("refusing to mix"), "{out}");
    }
    // auto keeps using the backend that holds our rules.
    topo.pod.run(sidecar_argv(&["init"])).assert_success();
    assert_eq!(dump(&topo.pod, backend), rules);
}

/// Review item: the fence accepted every packet of an ESTABLISHED conntrack entry, whoever
/// sent it. The agent binds the source port of a finished sidecar flow (here: the sidecar's
/// upstream DNS query, and a plain UDP flow) and sends datagrams matching its entry. Judged
/// on the outside: the sink's log and a capture of the internet side of the veth.
fn the_sidecars_tracked_flows_cannot_be_reused(backend: &str) {
    prereq!(backend, "tcpdump");
    let topo = Topology::new().unwrap();
    let dns = UdpSink::start(&topo.internet, 53).unwrap();
    let sink = UdpSink::start(&topo.internet, 9999).unwrap();
    let echo_port = 7;
    let _echo = TcpEcho::start(&topo.internet, echo_port).unwrap();
    init(&topo, backend, &[]);
    let mut capture = PacketCapture::start(&topo.internet, "eth0").unwrap();
    // Send `payload` as `uid` over `proto` to host:port from source port `sport`.
    let from_port = |uid: u32, proto: &str, host: &str, port: &str, sport: u16, payload: &str| {
        let sport = sport.to_string();
        escape(
            &topo.pod,
            uid,
            &[proto, host, port, "--sport", &sport, "--payload", payload],
        )
    };
    let echo_port = echo_port.to_string();
    let mut sport = 40_100u16;
    for host in [
        topo.upstream_v4(0).to_string(),
        topo.upstream_v6(0).to_string(),
    ] {
        let host = host.as_str();
        for (port, received) in [("53", &dns as &UdpSink), ("9999", &sink as &UdpSink)] {
            sport += 1;
            // The sidecar's flow: goes out directly (its UID is exempt) and is answered.
            let r = from_port(SIDECAR_UID, "udp", host, port, sport, "sidecar-query");
            assert!(
                r.ok && r.recv == "sidecar-query",
                "sidecar flow to {host}:{port}: {r:?}"
            );
            let before = received.received().len();
            // The agent rides the same 5-tuple while the conntrack entry lives.
            let r = from_port(AGENT_UID, "udp", host, port, sport, "agent-smuggled");
            assert!(
                !r.ok,
                "agent reusing the sidecar's flow {host}:{port} from {sport}: {r:?}"
            );
            if port == "9999" {
                assert!(is_refusal(&r.errno), "want a clear errno: {r:?}");
            }
            assert_eq!(
                received.received().len(),
                before,
                "nothing may reach {host}:{port}: {:?}",
                received.received()
            );
        }
        // TCP: a finished sidecar connection's source port, reused by the agent, is a new
        // flow and goes to the (absent) transparent listener: refused, nothing leaves.
        sport += 1;
        let r = from_port(SIDECAR_UID, "tcp", host, &echo_port, sport, "sidecar-tcp");
        assert!(r.ok && r.recv == "sidecar-tcp", "sidecar tcp flow: {r:?}");
        let r = from_port(AGENT_UID, "tcp", host, &echo_port, sport, "agent-tcp");
        assert!(!r.ok, "agent reusing the sidecar's tcp port: {r:?}");
    }
    let all = capture.packets();
    // Only the sidecar's own packets crossed: none carries the agent's payload (the capture
    // keeps 256 bytes of each packet, so payloads are visible).
    for payload in ["agent-smuggled", "agent-tcp"] {
        assert!(
            !capture.carried(payload),
            "agent packets left the pod: {all:#?}"
        );
    }
    assert!(
        capture.carried("sidecar-query"),
        "control: the sidecar's payload is visible: {all:#?} {}",
        capture.describe()
    );
    assert!(
        all.iter().any(|l| l.contains(".40101 >")),
        "control: the sidecar's flow is visible: {all:#?}"
    );
}

/// Review item: a socket bound to the pod interface (`SO_BINDTODEVICE`, `IP_UNICAST_IF`, a
/// link-local scope id) keeps its REDIRECTed packets — destination now 127.0.0.1/::1:15001 or
/// :15053, payload the agent's — on that interface, so they went out on the wire.
fn redirected_packets_never_leave_the_pod_interface(backend: &str) {
    prereq!(backend, "tcpdump");
    let topo = Topology::new().unwrap();
    let sink = UdpSink::start(&topo.internet, 53).unwrap();
    init(&topo, backend, &[]);
    let mut capture = PacketCapture::start(&topo.internet, "eth0").unwrap();
    let v4 = topo.upstream_v4(0).to_string();
    let v6 = topo.upstream_v6(0).to_string();
    let peer_ll = topo
        .internet
        .run([
            "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
        ])
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .map(|a| a.split('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let mut attempts: Vec<Vec<String>> = Vec::new();
    for host in [&v4, &v6] {
        for trick in [["--dev", "eth0"], ["--unicast-if", "eth0"]] {
            attempts.push(
                ["tcp", host, "80", "--timeout", "1.5"]
                    .iter()
                    .chain(trick.iter())
                    .map(|s| s.to_string())
                    .collect(),
            );
            attempts.push(
                [
                    "udp",
                    host,
                    "53",
                    "--timeout",
                    "1.5",
                    "--payload",
                    "smuggled-dns",
                ]
                .iter()
                .chain(trick.iter())
                .map(|s| s.to_string())
                .collect(),
            );
        }
    }
    if !peer_ll.is_empty() {
        for proto_port in [["tcp", "80"], ["udp", "53"]] {
            attempts.push(vec![
                proto_port[0].into(),
                peer_ll.clone(),
                proto_port[1].into(),
                "--scope".into(),
                "eth0".into(),
                "--timeout".into(),
                "1.5".into(),
                "--payload".into(),
                "smuggled-dns".into(),
            ]);
        }
    }
    for args in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = escape(&topo.pod, AGENT_UID, &args);
        assert!(!r.ok, "{args:?}: {r:?}");
    }
    let leaked: Vec<String> = capture
        .packets()
        .into_iter()
        .filter(|l| l.contains(" > 127.") || l.contains(" > ::1."))
        .collect();
    assert!(
        leaked.is_empty(),
        "redirected packets left the pod interface: {leaked:#?}"
    );
    assert!(sink.received().is_empty(), "{:?}", sink.received());
    assert!(!capture.carried("smuggled-dns"), "a payload left the pod");
    // Control: the same client, unbound, is redirected as usual (nothing listens on 15001:
    // refused at once, not a timeout).
    let r = escape(&topo.pod, AGENT_UID, &["tcp", &v4, "80"]);
    assert_eq!(r.errno.as_deref(), Some("ECONNREFUSED"), "{r:?}");
}

macro_rules! per_backend {
    ($($module:ident => $backend:literal),* $(,)?) => {$(
        mod $module {
            #[test]
            fn udp_to_outside_is_refused() {
                super::udp_to_outside_is_refused($backend);
            }
            #[test]
            fn icmp_echo_is_refused() {
                super::icmp_echo_is_refused($backend);
            }
            #[test]
            fn tcp_is_redirected_with_original_destination() {
                super::tcp_is_redirected_with_original_destination($backend);
            }
            #[test]
            fn dns_is_redirected_to_policy_dns() {
                super::dns_is_redirected_to_policy_dns($backend);
            }
            #[test]
            fn sidecar_ports_refused_but_loopback_services_work() {
                super::sidecar_ports_refused_but_loopback_services_work($backend);
            }
            #[test]
            fn sidecar_uid_goes_out_directly_and_dead_sidecar_means_refused() {
                super::sidecar_uid_goes_out_directly_and_dead_sidecar_means_refused($backend);
            }
            #[test]
            fn exclusions_bypass_capture_and_fence() {
                super::exclusions_bypass_capture_and_fence($backend);
            }
            #[test]
            fn validate_fails_without_rules_and_passes_with_them() {
                super::validate_fails_without_rules_and_passes_with_them($backend);
            }
            #[test]
            fn rules_idempotent_cleanup_exact_and_dry_run_inert() {
                super::rules_idempotent_cleanup_exact_and_dry_run_inert($backend);
            }
            #[test]
            fn backends_are_never_mixed() {
                super::backends_are_never_mixed($backend);
            }
            #[test]
            fn the_sidecars_tracked_flows_cannot_be_reused() {
                super::the_sidecars_tracked_flows_cannot_be_reused($backend);
            }
            #[test]
            fn redirected_packets_never_leave_the_pod_interface() {
                super::redirected_packets_never_leave_the_pod_interface($backend);
            }
        }
    )*};
}

per_backend! {
    iptables_legacy => "iptables-legacy",
    iptables_nft => "iptables-nft",
    nft => "nft",
}

/// The harness itself: without any rules the agent reaches every server in the internet
/// namespace by name (dnsmasq + resolv.conf), over TLS (test CA) and IPv6.
#[test]
fn harness_smoke_without_rules_everything_reaches_the_internet() {
    require!("python3", "curl", "nginx", "dnsmasq", "openssl", "ss");
    let topo = Topology::new().unwrap();
    let nginx = Nginx::start(&topo, DEFAULT_TLS_NAMES).unwrap();
    let dns = Dnsmasq::start(&topo, &default_records(&topo)).unwrap();
    let _echo = TcpEcho::start(&topo.internet, 7).unwrap();
    let udp = UdpSink::start(&topo.internet, 9999).unwrap();

    let ca = nginx.pki.ca_cert.display().to_string();
    let out = topo.pod.run(as_agent(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        &ca,
        "https://allowed.test/hello",
    ]));
    out.assert_success();
    assert!(out.stdout.contains("host=allowed.test"), "{out}");
    assert!(dns.queries().contains("allowed.test"), "{}", dns.queries());
    let v6 = format!("http://[{}]/v6", topo.upstream_v6(1));
    let out = topo
        .pod
        .run(as_agent(&["curl", "-sS", "--max-time", "10", &v6]));
    out.assert_success();
    let reqs = nginx.requests();
    assert!(
        reqs.iter()
            .any(|r| r["sni"] == "allowed.test" && r["uri"] == "/hello"),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r["uri"] == "/v6" && r["server_addr"] == topo.upstream_v6(1).to_string()),
        "{reqs:?}"
    );

    let up = topo.upstream_v4(0).to_string();
    let r = probe(
        &topo.pod,
        Some(AGENT_UID),
        &["tcp", &up, "7", "3", "ping\n"],
    );
    assert!(r.ok && r.recv == "ping\n", "{r:?}");
    let r = probe(&topo.pod, Some(AGENT_UID), &["udp", &up, "9999"]);
    assert!(r.ok, "{r:?}");
    assert_eq!(udp.received().len(), 1);
}
