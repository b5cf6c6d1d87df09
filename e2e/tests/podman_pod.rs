//! A real runtime runs the sandbox pod: `palisade sandbox render --topology classic`
//! (Podman 4.3 ignores `restartPolicy: Always` on init containers) is played by
//! `podman kube play` with the images of `scripts/images --debug`, on a network the test
//! creates, and everything is checked inside the real containers or on the outside:
//!
//! * `palisade-init` ran as UID 0 with exactly NET_ADMIN + NET_RAW (effective and bounding),
//!   a read-only root and no_new_privs, exited 0, and its rules are in the pod's namespace;
//! * the sidecar runs as the proxy UID, CapEff/CapPrm 0, on a read-only root;
//! * the agent runs as an SCC-range UID with no passwd entry, CapEff/CapPrm/CapBnd 0,
//!   NoNewPrivs 1, and no ServiceAccount token (nor the sidecar's secrets) anywhere;
//! * the agent's request to the allowed upstream arrives with the credential the sidecar
//!   read from its Secret volume; a denied host, UDP and the sidecar's admin port are
//!   refused — judged by what the upstreams received and what crossed the wire;
//! * the sidecar killed → the agent's egress is refused, and nothing leaves.
//!
//! The pod's network is an `--internal` Podman bridge whose only other member is the
//! test's upstream namespace (DNS, an HTTPS/HTTP sink, a UDP sink): nothing else is
//! reachable, and every address the pod uses belongs to the test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::time::Duration;

use palisade_e2e::attack::PacketCapture;
use palisade_e2e::podman::{
    self, DENIED_HOST, KubePod, POD_HOST, PodNetwork, UPSTREAM_HOST, wait_for,
};
use palisade_e2e::servers::HttpSink;
use palisade_e2e::{Netns, Proc, TestPki, UdpSink, workspace_bin};

/// The agent's UID range, as OpenShift annotates a namespace (`start/size`).
const UID_RANGE: &str = "1000650000/10000";
/// The UIDs the renderer derives from it: the range's first, and the next for the proxy.
const AGENT_UID: u32 = 1_000_650_000;
const SIDECAR_UID: u32 = 1_000_650_001;
/// The sidecar's admin port (/live, /ready, /metrics).
const ADMIN_PORT: u16 = 15020;
/// The UDP sink's port in the upstream namespace.
const UDP_PORT: u16 = 9999;
/// Where the agent container finds the sandbox CA the sidecar publishes.
const CA_BUNDLE: &str = "/var/run/palisade/ca-bundle.pem";
const AGENT_PY: &str = "/opt/e2e/agent.py";

fn policy(cidr: &str, secret_file: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata:
  name: podman-e2e
spec:
  egress:
    - name: allowed
      hosts: [allowed.test]
      ports: [443]
      allowedCidrs: [{cidr}]
      credential: upstream-token
      http:
        access: read-only
  credentials:
    upstream-token:
      from:
        file: {secret_file}
"
    )
}

/// dnsmasq in the upstream namespace on `<prefix>.1:53`: allowed.test → `.1`,
/// denied.test → `.254`, nothing else.
fn dnsmasq(net: &PodNetwork) -> Proc {
    let ns: &Netns = &net.upstream;
    let log = ns.workdir().join("dnsmasq.log");
    let argv = vec![
        "dnsmasq".to_owned(),
        "--keep-in-foreground".into(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-interfaces".into(),
        format!("--listen-address={}", net.addr(UPSTREAM_HOST)),
        "--port=53".into(),
        "--user=root".into(),
        "--group=root".into(),
        "--pid-file=".into(),
        "--log-queries".into(),
        format!("--log-facility={}", log.display()),
        format!("--host-record=allowed.test,{}", net.addr(UPSTREAM_HOST)),
        format!("--host-record=denied.test,{}", net.addr(DENIED_HOST)),
    ];
    let proc = ns.spawn(&argv).unwrap();
    palisade_e2e::process::wait_for_udp_listen(ns, 53, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("dnsmasq: {e:#}: {}", proc.describe()));
    proc
}

fn json_line(out: &str, prefix: &str) -> Option<serde_json::Value> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .find_map(|l| serde_json::from_str(l.trim()).ok())
}

/// One JSON line printed by `agent.py` run with `podman exec` in the agent container.
fn agent_py(pod: &KubePod, args: &[&str]) -> serde_json::Value {
    let mut argv = vec!["/usr/bin/python3", AGENT_PY];
    argv.extend(args);
    let env = format!("SSL_CERT_FILE={CA_BUNDLE}");
    let out = pod.exec("agent", &[&env], &argv);
    json_line(&out.stdout, "").unwrap_or_else(|| panic!("agent.py printed no JSON: {out}"))
}

/// The sink's request lines whose path starts with `path`.
fn requests_to(sink: &HttpSink, path: &str) -> Vec<serde_json::Value> {
    sink.requests()
        .into_iter()
        .filter(|r| {
            r["line"]
                .as_str()
                .and_then(|l| l.split(' ').nth(1))
                .is_some_and(|p| p.starts_with(path))
        })
        .collect()
}

/// `Name: value` of /proc/PID/status.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} in /proc/PID/status:\n{status}"))
}

/// Whether the mount at `/` of a process is read-only (its /proc/PID/mountinfo).
fn root_read_only(pid: u32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .map(|l| {
            l.split(' ')
                .nth(5)
                .unwrap_or("")
                .split(',')
                .any(|o| o == "ro")
        })
        .unwrap_or_else(|| panic!("no / mount in /proc/{pid}/mountinfo:\n{info}"))
}

/// Packets the fence's "sidecar ports on loopback" TCP reject rule counted (IPv4, as
/// `nft list ruleset` shows the rules `init` installed with iptables-nft).
fn sidecar_port_rejects(rules: &str) -> u64 {
    rules
        .lines()
        .filter(|l| l.contains("oifname \"lo\" tcp dport 15000-15099") && l.contains("reject"))
        .filter_map(|l| {
            let rest = &l[l.find("counter packets ")? + "counter packets ".len()..];
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// The pod's capture + fence rules, as host tools show them inside its namespace.
fn pod_rules(infra_pid: u32) -> String {
    let target = infra_pid.to_string();
    let mut all = String::new();
    for tool in [
        &["nft", "list", "ruleset"][..],
        &["iptables-legacy-save"][..],
        &["ip6tables-legacy-save"][..],
    ] {
        let mut argv = vec!["-t", &target, "-n"];
        argv.extend(tool);
        let out = std::process::Command::new("nsenter")
            .args(&argv)
            .output()
            .unwrap();
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

#[test]
fn rendered_pod_runs_under_podman_with_its_hardening_and_fence() {
    if !podman::require(&["dnsmasq", "tcpdump", "openssl", "python3", "curl"]) {
        return;
    }
    let images = podman::build_images("e2e").unwrap();
    let net = PodNetwork::create().unwrap();
    let up = &net.upstream;
    let pod_ip = net.addr(POD_HOST);
    let upstream_ip = net.addr(UPSTREAM_HOST);
    let denied_ip = net.addr(DENIED_HOST);

    // The test's servers: DNS, an HTTP(S) sink on every upstream address, a UDP sink.
    let _dns = dnsmasq(&net);
    let pki = TestPki::generate(up.workdir(), &["allowed.test", "denied.test"]).unwrap();
    let sink = HttpSink::start(up, 80, 443, &pki).unwrap();
    let udp = UdpSink::start(up, UDP_PORT).unwrap();
    let mut wire = PacketCapture::start(up, &net.upstream_if).unwrap();

    // The pod, as `palisade sandbox render` prints it (classic topology, file policy, the
    // credential in a Secret mounted into the sidecar only, UIDs from an SCC range).
    let work = up.workdir();
    let token = format!("e2e-{:016x}", rand::random::<u64>());
    let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let pod_name = format!("palisade-e2e-{suffix}");
    let secret_name = format!("palisade-e2e-cred-{suffix}");
    let policy_file = work.join("policy.yaml");
    std::fs::write(
        &policy_file,
        policy(
            &format!("{}.0/24", net.prefix),
            "/etc/palisade/secrets/token",
        ),
    )
    .unwrap();
    let report_url = "https://allowed.test/report";
    let render = std::process::Command::new(workspace_bin("palisade"))
        .args(["sandbox", "render", &pod_name, "--policy"])
        .arg(&policy_file)
        .args(["--image", &images.agent])
        .args(["--sidecar-image", &images.sidecar])
        .args(["--shim-image", &images.shim])
        .args(["--topology", "classic", "--policy-source", "file"])
        .args(["--uid-range", UID_RANGE, "--image-pull-policy", "never"])
        .args(["--sidecar-secret", &secret_name, "--upstream-ca"])
        .arg(&pki.ca_cert)
        .args(["--", "/usr/bin/python3", AGENT_PY, "report", report_url])
        .output()
        .unwrap();
    let rendered = String::from_utf8_lossy(&render.stdout).into_owned();
    assert!(
        render.status.success(),
        "palisade sandbox render failed: {}",
        String::from_utf8_lossy(&render.stderr)
    );
    let manifest = podman::podman43_compatible(&rendered).unwrap();
    assert_eq!(
        manifest.removed_annotations,
        ["palisade.dev/policy-revision"],
        "only the over-long annotation Podman 4.3 refuses may be removed"
    );
    let renamed: Vec<(&str, bool)> = manifest
        .empty_dirs
        .iter()
        .map(|e| (e.rendered.as_str(), e.memory))
        .collect();
    assert_eq!(
        renamed,
        [
            ("palisade-init-run", true),
            ("palisade-shim", false),
            ("palisade-shared", true),
            ("palisade-home", false)
        ],
        "the rendered pod's emptyDirs"
    );
    let yaml_file = work.join("pod.yaml");
    std::fs::write(&yaml_file, &manifest.yaml).unwrap();
    let secret =
        podman::create_secret(&net.conf, work, &secret_name, &[("token", &token)]).unwrap();
    let pod = KubePod::new(
        &net.conf,
        &pod_name,
        &yaml_file,
        vec![secret],
        manifest.empty_dirs.clone(),
    );
    pod.create(&net, &pod_ip).unwrap();

    // --- init: the container configuration runc is given (Podman removes init containers
    // once they have run, so it is read before the pod starts) ---
    let init = pod.inspect("palisade-init").unwrap();
    let caps = |key: &str| -> Vec<String> {
        let mut v: Vec<String> = serde_json::from_value(init[key].clone()).unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(
        caps("EffectiveCaps"),
        ["CAP_NET_ADMIN", "CAP_NET_RAW"],
        "{init:#}"
    );
    assert_eq!(
        caps("BoundingCaps"),
        ["CAP_NET_ADMIN", "CAP_NET_RAW"],
        "{init:#}"
    );
    assert_eq!(init["Config"]["User"], "0:0", "init runs as root");
    assert_eq!(init["HostConfig"]["ReadonlyRootfs"], true);
    let sec_opts = init["HostConfig"]["SecurityOpt"].to_string();
    assert!(sec_opts.contains("no-new-privileges"), "{sec_opts}");
    assert_eq!(init["HostConfig"]["Privileged"], false);

    pod.start().unwrap();

    // --- the agent's report: identity, capabilities, tokens, and the allowed request ---
    let report = wait_for(Duration::from_secs(90), || {
        json_line(&pod.logs("agent"), "PALISADE-E2E-REPORT ")
    })
    .expect("the agent never reported (its logs follow)");

    // init ran to completion and left its rules behind.
    let init_name = pod.container("palisade-init");
    let exits = pod.exits("palisade-init").unwrap();
    assert_eq!(exits, [0], "init's exit codes");
    let exits = pod.exits("palisade-shim-install").unwrap();
    assert_eq!(exits, [0], "the shim copy's exit codes");
    let running = pod.podman(&[
        "ps",
        "--filter",
        &format!("pod={pod_name}"),
        "--format",
        "{{.Names}}",
    ]);
    assert!(
        !running.stdout.contains(&init_name),
        "init is still running: {running}"
    );
    let infra = pod.podman(&[
        "pod",
        "inspect",
        "--format",
        "{{.InfraContainerID}}",
        &pod_name,
    ]);
    let infra_pid = pod
        .podman(&["inspect", "--format", "{{.State.Pid}}", infra.stdout.trim()])
        .stdout
        .trim()
        .parse::<u32>()
        .unwrap();
    let rules = pod_rules(infra_pid);
    for chain in ["PALISADE_OUTPUT", "PALISADE_FENCE"] {
        assert!(
            rules.contains(chain),
            "no {chain} in the pod's namespace:\n{rules}"
        );
    }
    assert!(
        rules.contains(&SIDECAR_UID.to_string()),
        "the rules do not exempt the proxy UID {SIDECAR_UID}:\n{rules}"
    );

    // The sidecar: proxy UID, no capabilities, read-only root.
    let sidecar_pid = pod.pid("palisade-sidecar").unwrap();
    let status = std::fs::read_to_string(format!("/proc/{sidecar_pid}/status")).unwrap();
    let uid_line = format!("{SIDECAR_UID}\t{SIDECAR_UID}\t{SIDECAR_UID}\t{SIDECAR_UID}");
    assert_eq!(status_field(&status, "Uid"), uid_line, "{status}");
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&status, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(&status, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert!(
        root_read_only(sidecar_pid),
        "the sidecar's root is writable"
    );

    // The agent (the shim is PID 1 of its container; the report is from the workload).
    let st = &report["status"];
    let agent_uid = format!("{AGENT_UID}\t{AGENT_UID}\t{AGENT_UID}\t{AGENT_UID}");
    assert_eq!(st["Uid"], agent_uid.as_str(), "{report:#}");
    for cap in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "{cap}: {report:#}");
    }
    assert_eq!(st["NoNewPrivs"], "1", "{report:#}");
    // No passwd entry the agent's UID could read (Podman writes a root-only /etc/passwd
    // into an image without one); the shim's nss_wrapper entry is what the C library sees.
    let own_entry = format!("{AGENT_UID}:");
    let lines = report["passwd_lines_for_uid"].as_array().unwrap();
    assert!(
        !lines
            .iter()
            .any(|l| l.as_str().unwrap_or("").starts_with(&own_entry)),
        "the agent's UID has a passwd entry: {report:#}"
    );
    assert!(
        pod.logs("agent")
            .contains(&format!("UID {AGENT_UID} has no passwd entry")),
        "the shim did not see a UID without passwd entry"
    );
    assert_eq!(report["getpwuid"], "agent", "{report:#}");
    assert_eq!(
        report["token_paths"],
        serde_json::json!([]),
        "ServiceAccount token paths in the agent's file system: {report:#}"
    );
    let agent_pid = pod.pid("agent").unwrap();
    let shim_status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).unwrap();
    assert_eq!(status_field(&shim_status, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(&shim_status, "NoNewPrivs"), "1");
    let secrets = agent_py(
        &pod,
        &[
            "paths",
            "/etc/palisade/secrets",
            "/etc/palisade/config",
            "/var/run/secrets",
            "/run/secrets",
        ],
    );
    for (path, seen) in secrets.as_object().unwrap() {
        assert_eq!(
            seen["exists"], false,
            "{path} is visible to the agent: {secrets}"
        );
    }
    let env = pod.inspect("agent").unwrap()["Config"]["Env"].to_string();
    assert!(
        !env.contains(&token),
        "the credential is in the agent's environment"
    );
    assert!(
        !env.contains("PALISADE_GATEWAY"),
        "gateway settings in the agent's env: {env}"
    );

    // Allowed: the upstream got the credential the sidecar injected.
    let fetch = &report["fetch"];
    assert_eq!(
        fetch["status"], 200,
        "the allowed request failed: {report:#}"
    );
    let got = requests_to(&sink, "/report");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["headers"]["authorization"],
        format!("Bearer {token}")
    );
    assert!(
        !fetch.to_string().contains(&token),
        "the agent saw the credential"
    );

    // --- refusals, judged on the outside ---
    // A denied host: by name (policy DNS refuses it) and by address with its SNI.
    let by_name = agent_py(&pod, &["fetch", "https://denied.test/denied-name"]);
    assert_ne!(by_name["status"], 200, "{by_name}");
    let by_addr = agent_py(
        &pod,
        &[
            "fetch",
            "https://denied.test/denied-addr",
            &denied_ip,
            "denied.test",
        ],
    );
    assert_ne!(by_addr["status"], 200, "{by_addr}");
    // Spoofing: the denied address with the allowed name's SNI and Host.
    let spoof = agent_py(
        &pod,
        &[
            "fetch",
            "https://allowed.test/denied-spoof",
            &denied_ip,
            "allowed.test",
        ],
    );
    assert_ne!(spoof["status"], 200, "{spoof}");
    let plain = agent_py(
        &pod,
        &["fetch", &format!("http://{denied_ip}/denied-plain")],
    );
    assert_ne!(plain["status"], 200, "{plain}");
    assert!(
        requests_to(&sink, "/denied").is_empty(),
        "a denied request arrived: {:?}",
        sink.requests()
    );

    // UDP (not DNS): fenced.
    let dgram = agent_py(&pod, &["udp", &upstream_ip, &UDP_PORT.to_string()]);
    assert!(dgram.get("reply").is_none(), "{dgram}");

    // The sidecar's admin port: refused to the agent on loopback and on the pod's own
    // address (both leave by `lo`: the fence's reject rule for the sidecar's ports counts
    // each), while the outside (kubelet, Prometheus) reaches it.
    let rejected_before = sidecar_port_rejects(&pod_rules(infra_pid));
    for addr in ["127.0.0.1", pod_ip.as_str()] {
        let admin = agent_py(
            &pod,
            &["fetch", &format!("http://{addr}:{ADMIN_PORT}/metrics")],
        );
        let body = admin["body"].as_str().unwrap_or_default();
        assert!(
            !body.contains("palisade_"),
            "the agent read the metrics via {addr}: {admin}"
        );
        assert_ne!(admin["status"], 200, "{admin}");
    }
    let rejected_after = sidecar_port_rejects(&pod_rules(infra_pid));
    assert!(
        rejected_after >= rejected_before + 2,
        "the fence did not reject the agent's two connections to {ADMIN_PORT} \
         ({rejected_before} → {rejected_after} packets)"
    );
    let outside = up.run([
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{pod_ip}:{ADMIN_PORT}/metrics"),
    ]);
    assert!(
        outside.stdout.contains("palisade_"),
        "the admin port is not served: {outside}"
    );

    // What crossed the wire so far: the pod never sent a packet to the denied address or
    // to the UDP sink.
    let packets = wire.packets();
    let from_pod_to = |packets: &[String], to: &str| -> Vec<String> {
        let (src, dst) = (format!("{pod_ip}."), format!("> {to}"));
        packets
            .iter()
            .filter(|l| l.contains(&src) && l.contains(&dst))
            .cloned()
            .collect()
    };
    assert!(
        from_pod_to(&packets, &format!("{denied_ip}.")).is_empty(),
        "{packets:#?}"
    );
    assert!(
        from_pod_to(&packets, &format!("{upstream_ip}.{UDP_PORT}")).is_empty(),
        "{packets:#?}"
    );
    assert!(
        !from_pod_to(&packets, &format!("{upstream_ip}.443")).is_empty(),
        "the capture missed the allowed exchange (is it on the right interface?): {packets:#?}"
    );
    assert!(udp.received().is_empty(), "{:?}", udp.received());
    assert!(
        !wire.carried("palisade-e2e-udp"),
        "the UDP payload left the pod"
    );

    // --- the sidecar killed: egress refused, nothing leaves ---
    let mut wire = PacketCapture::start(up, &net.upstream_if).unwrap();
    pod.podman(&[
        "kill",
        "--signal",
        "KILL",
        &pod.container("palisade-sidecar"),
    ])
    .ok_or_fail()
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || pod
            .pid("palisade-sidecar")
            .is_err()
            .then_some(()))
        .is_some(),
        "the sidecar is still running"
    );
    let after = agent_py(&pod, &["fetch", "https://allowed.test/after-kill"]);
    assert_ne!(after["status"], 200, "{after}");
    let after_addr = agent_py(
        &pod,
        &[
            "fetch",
            "https://allowed.test/after-kill-addr",
            &upstream_ip,
            "allowed.test",
        ],
    );
    assert_eq!(after_addr["ok"], false, "{after_addr}");
    assert!(
        requests_to(&sink, "/after-kill").is_empty(),
        "{:?}",
        sink.requests()
    );

    // No new connection (SYN) and no payload from the pod; the kernel closing the dead
    // sidecar's pooled upstream connection (FIN, ACK: length 0) is all there may be.
    let packets = wire.packets();
    let opened_or_sent: Vec<String> = from_pod_to(&packets, &format!("{upstream_ip}."))
        .into_iter()
        .filter(|l| l.contains("Flags [S") || !l.ends_with("length 0"))
        .collect();
    assert!(
        opened_or_sent.is_empty(),
        "the pod reached the upstream with its sidecar dead: {packets:#?}"
    );
}
