//! Policy DNS end to end: the real `palisade-sidecar run` (as UID 1337, no capabilities) in
//! a pod namespace, forwarding to dnsmasq in the "internet" namespace (which knows
//! `allowed.test`, `other.test` and `denied.test`), queried with `dig` as the agent UID
//! with every capability dropped.
//!
//! dnsmasq answers all three names, so a REFUSED for `denied.test` can only come from the
//! sidecar — and its query log proves the name never left the pod.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;
use std::time::Duration;

use palisade_e2e::attack::{PacketCapture, dns_smuggle};
use palisade_e2e::*;

const DNS_PORT: &str = "15053";
const ADMIN_METRICS: &str = "http://127.0.0.1:15020/metrics";

const POLICY: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata:
  name: e2e-dns
spec:
  egress:
    - name: web
      hosts: [\"allowed.test\"]
      ports: [80, 443]
";

struct Pod {
    topo: Topology,
    dnsmasq: Dnsmasq,
    sidecar: Proc,
}

/// Topology + dnsmasq (which writes the pod's resolv.conf, read by the sidecar as its
/// upstream) + the sidecar's data plane, ready on 15053.
fn start_pod() -> Pod {
    let topo = Topology::new().unwrap();
    let dnsmasq = Dnsmasq::start(&topo, &default_records(&topo)).unwrap();
    let policy: PathBuf = topo.pod.workdir().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    palisade_e2e::netns::make_world_readable(&policy).unwrap();
    let policy = policy.display().to_string();
    let mut sidecar = topo
        .pod
        .spawn(as_sidecar(&palisade_e2e::bins::sidecar_argv(&[
            "run", "--policy", &policy,
        ])))
        .unwrap();
    let ready = wait_for_udp_listen(&topo.pod, 15053, Duration::from_secs(30))
        .and_then(|()| wait_for_tcp_listen(&topo.pod, 15053, Duration::from_secs(30)));
    if let Err(err) = ready {
        let exited = sidecar.try_status();
        panic!(
            "sidecar DNS not listening ({err:#}; exited: {exited:?}): {}",
            sidecar.describe()
        );
    }
    Pod {
        topo,
        dnsmasq,
        sidecar,
    }
}

fn dig(pod: &Pod, args: &[&str]) -> CmdOutput {
    let mut argv = vec!["dig", "+tries=1", "+time=5"];
    argv.extend_from_slice(args);
    pod.topo.pod.run(as_agent(&argv))
}

fn metrics(pod: &Pod) -> String {
    // As the sidecar UID: the fence (when installed) keeps every other UID off 15020.
    let out = pod.topo.pod.run(as_sidecar(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        ADMIN_METRICS,
    ]));
    out.assert_success();
    out.stdout
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[test]
fn dns_on_15053_forwards_allowed_names_and_refuses_the_rest() {
    require!("dig", "dnsmasq", "curl");
    let pod = start_pod();
    let v4 = pod.topo.upstream_v4(0).to_string();
    let v6 = pod.topo.upstream_v6(0).to_string();

    let a = dig(&pod, &["@127.0.0.1", "-p", DNS_PORT, "allowed.test", "A"]);
    a.assert_success();
    assert!(
        a.stdout.contains("status: NOERROR") && a.stdout.contains(&v4),
        "{a}"
    );
    let aaaa = dig(
        &pod,
        &["@127.0.0.1", "-p", DNS_PORT, "ALLOWED.test.", "AAAA"],
    );
    assert!(
        aaaa.stdout.contains("status: NOERROR") && aaaa.stdout.contains(&v6),
        "{aaaa}"
    );
    let tcp = dig(&pod, &["+tcp", "@::1", "-p", DNS_PORT, "allowed.test", "A"]);
    assert!(
        tcp.stdout.contains("status: NOERROR") && tcp.stdout.contains(&v4),
        "{tcp}"
    );

    // dnsmasq knows denied.test; the sidecar must not ask it.
    for qtype in ["A", "AAAA", "TXT"] {
        let denied = dig(&pod, &["@127.0.0.1", "-p", DNS_PORT, "denied.test", qtype]);
        assert!(denied.stdout.contains("status: REFUSED"), "{denied}");
        assert!(
            !denied.stdout.contains(&pod.topo.upstream_v4(2).to_string()),
            "{denied}"
        );
    }
    let log = pod.dnsmasq.queries();
    assert!(
        log.contains("allowed.test"),
        "dnsmasq saw no allowed query:\n{log}"
    );
    assert!(
        !log.contains("denied.test"),
        "a denied name reached the upstream:\n{log}"
    );

    let m = metrics(&pod);
    assert_eq!(
        counter(
            &m,
            "palisade_sidecar_dns_queries_total{decision=\"allow\",transport=\"udp\"}"
        ),
        2
    );
    assert_eq!(
        counter(
            &m,
            "palisade_sidecar_dns_queries_total{decision=\"allow\",transport=\"tcp\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &m,
            "palisade_sidecar_dns_queries_total{decision=\"deny\",transport=\"udp\"}"
        ),
        3
    );
    assert!(
        !m.contains("denied.test") && !m.contains("allowed.test"),
        "names in metrics:\n{m}"
    );
    assert!(
        pod.sidecar.stderr().contains("denied.test")
            || pod.sidecar.stdout().contains("denied.test"),
        "no audit event naming the denied query: {}",
        pod.sidecar.describe()
    );
}

#[test]
fn with_capture_rules_port_53_goes_through_the_policy() {
    require!("dig", "dnsmasq", "curl", "iptables");
    let pod = start_pod();
    let init = pod
        .topo
        .pod
        .run(palisade_e2e::bins::sidecar_argv(&["init"]));
    init.assert_success();
    let v4 = pod.topo.upstream_v4(0).to_string();

    // Plain `dig`: resolv.conf names dnsmasq on port 53; the rules send it to 15053.
    let plain = dig(&pod, &["allowed.test"]);
    assert!(
        plain.stdout.contains("status: NOERROR") && plain.stdout.contains(&v4),
        "{plain}"
    );
    let tcp = dig(&pod, &["+tcp", "allowed.test"]);
    assert!(
        tcp.stdout.contains("status: NOERROR") && tcp.stdout.contains(&v4),
        "{tcp}"
    );
    // Naming the upstream explicitly changes nothing.
    let server = format!("@{}", pod.dnsmasq.addr_v4);
    for args in [
        vec!["denied.test"],
        vec![server.as_str(), "denied.test"],
        vec!["+tcp", "other.test"],
    ] {
        let out = dig(&pod, &args);
        assert!(out.stdout.contains("status: REFUSED"), "{out}");
    }
    let log = pod.dnsmasq.queries();
    assert!(log.contains("allowed.test"), "{log}");
    assert!(
        !log.contains("denied.test") && !log.contains("other.test"),
        "{log}"
    );

    // The agent cannot go around the redirect to the sidecar's own port either.
    let direct = dig(&pod, &["@127.0.0.1", "-p", DNS_PORT, "allowed.test"]);
    assert!(!direct.stdout.contains("status: NOERROR"), "{direct}");

    let m = metrics(&pod);
    assert!(
        counter(
            &m,
            "palisade_sidecar_dns_queries_total{decision=\"allow\",transport=\"udp\"}"
        ) >= 1
    );
    assert!(
        counter(
            &m,
            "palisade_sidecar_dns_queries_total{decision=\"deny\",transport=\"tcp\"}"
        ) >= 1
    );
}

/// Review item: a query with one allowed question was forwarded byte for byte, records in
/// its answer/authority/additional sections and bytes after the message included — a data
/// channel to the resolver under names the policy denies. Judged on the outside: a capture
/// of the internet side of the veth (payload bytes) and dnsmasq's query log.
#[test]
fn only_the_question_reaches_the_resolver() {
    require!("dnsmasq", "curl", "tcpdump");
    let pod = start_pod();
    let mut capture = PacketCapture::start(&pod.topo.internet, "eth0").unwrap();
    let mut marks = Vec::new();
    for (tcp, transport) in [(false, "udp"), (true, "tcp")] {
        let ask = |mode: &str, mark: &str| {
            dns_smuggle(
                &pod.topo.pod,
                AGENT_UID,
                ("127.0.0.1", 15053),
                "allowed.test",
                mode,
                mark,
                tcp,
            )
        };
        // Control: the clean query is answered (and reaches dnsmasq).
        let r = ask("clean", "x");
        assert!(r.rcode == Some(0) && r.answers >= 1, "{transport}: {r:?}");
        for mode in ["answer", "authority", "additional", "trailing"] {
            let mark = format!("smuggled{mode}{transport}");
            let r = ask(mode, &mark);
            assert_eq!(
                r.rcode,
                Some(1),
                "{mode} over {transport}: want FORMERR: {r:?}"
            );
            marks.push(mark);
        }
        // EDNS options are dropped, the query itself is answered.
        let mark = format!("smuggledoption{transport}");
        let r = ask("edns-option", &mark);
        assert!(
            r.rcode == Some(0) && r.answers >= 1,
            "option over {transport}: {r:?}"
        );
        marks.push(mark);
    }
    for mark in &marks {
        assert!(!capture.carried(mark), "{mark} left the pod");
    }
    assert!(
        capture.carried("allowed"),
        "control: the allowed questions are visible"
    );
    let log = pod.dnsmasq.queries();
    assert!(
        !log.contains("denied.test") && !log.contains("smuggled"),
        "{log}"
    );
    assert!(log.contains("allowed.test"), "{log}");
    let m = metrics(&pod);
    assert_eq!(
        counter(
            &m,
            "palisade_sidecar_dns_bad_queries_total{kind=\"records\"}"
        ),
        6
    );
    assert_eq!(
        counter(
            &m,
            "palisade_sidecar_dns_bad_queries_total{kind=\"trailing\"}"
        ),
        2
    );
    assert_eq!(
        counter(&m, "palisade_sidecar_dns_edns_options_stripped_total"),
        2
    );
}
