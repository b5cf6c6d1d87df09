//! The keeper end to end: the real `palisade-sidecar run` (UID 1337, no capabilities) behind
//! real capture rules; its data plane is SIGKILLed, and the agent (UID 1000, no
//! capabilities) races to bind the sidecar's ports — 15001, 15020, 15053 (udp + tcp) and
//! 15080, on every address, with SO_REUSEADDR and SO_REUSEPORT — while no data plane runs.
//! Judged from the outside too: nginx's log shows which requests got out.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_e2e::*;

const START: Duration = Duration::from_secs(30);

const POLICY: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {name: keeper}
spec:
  egress:
    - name: web
      hosts: [allowed.test]
      ports: [80]
      allowedCidrs: [\"fd00::/8\"]
";

/// Binds (and listens on) every sidecar port it can for `hold` seconds, as fast as it can
/// from the moment it starts; prints one JSON line: the ports it got.
const SQUAT_PY: &str = r#"
import json, socket, sys, time
hold = float(sys.argv[1])
got, tries = [], 0
deadline = time.time() + hold
while time.time() < deadline:
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET, "127.0.0.1"),
                      (socket.AF_INET6, "::"), (socket.AF_INET6, "::1")):
        for port, kinds in ((15001, "t"), (15020, "t"), (15053, "tu"), (15080, "t")):
            for kind in kinds:
                if [addr, port, kind] in got:
                    continue
                s = socket.socket(fam, socket.SOCK_STREAM if kind == "t" else socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                tries += 1
                try:
                    s.bind((addr, port))
                    if kind == "t":
                        s.listen(16)
                    got.append([addr, port, kind])
                    # Keep it: a squatted port stays squatted.
                    globals().setdefault("held", []).append(s)
                except OSError:
                    s.close()
print(json.dumps({"got": got, "tries": tries}), flush=True)
"#;

fn write_world_readable(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    netns::make_world_readable(path).unwrap();
}

/// The pid serving connections: the keeper's child when there is one (this build), else
/// the sidecar process itself (a build without a keeper).
fn data_plane_pid(sidecar: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{sidecar}/task/{sidecar}/children"))
        .unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("--data-plane-sockets"))
                .unwrap_or(false)
        })
        .unwrap_or(sidecar)
}

fn ready(topo: &Topology) -> bool {
    topo.pod
        .run(as_sidecar(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            "http://127.0.0.1:15020/ready",
        ]))
        .success()
}

#[test]
fn a_killed_data_plane_gets_its_ports_back_and_the_agent_cannot_squat_them() {
    require!(
        "curl",
        "nginx",
        "dnsmasq",
        "python3",
        "openssl",
        "iptables-restore"
    );
    let topo = Topology::new().unwrap();
    let nginx = Nginx::start(&topo, DEFAULT_TLS_NAMES).unwrap();
    let _dns = Dnsmasq::start(&topo, &default_records(&topo)).unwrap();
    topo.pod.run(sidecar_argv(&["init"])).assert_success();
    let policy: PathBuf = topo.pod.workdir().join("policy.yaml");
    write_world_readable(&policy, POLICY);
    let squat = topo.pod.workdir().join("squat.py");
    write_world_readable(&squat, SQUAT_PY);
    let squat = squat.display().to_string();
    let sidecar = topo
        .pod
        .spawn(as_sidecar(&sidecar_argv(&[
            "run",
            "--policy",
            &policy.display().to_string(),
        ])))
        .unwrap();
    assert!(
        wait_until(START, || ready(&topo)),
        "sidecar not ready: {}",
        sidecar.describe()
    );
    let get = |path: &str| {
        topo.pod.run(as_agent(&[
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "20",
            &format!("http://allowed.test{path}"),
        ]))
    };
    let code = |out: &CmdOutput| out.stdout.lines().last().unwrap_or_default().to_string();
    let out = get("/before");
    assert_eq!(code(&out), "200", "control: {out}");

    // The agent starts squatting first, then the data plane dies under it.
    let mut squatter = topo.pod.spawn(as_agent(&[PYTHON, &squat, "4"])).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let victim = data_plane_pid(sidecar.pid());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(victim).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        squatter.wait_timeout(Duration::from_secs(30)).is_some(),
        "squatter hung: {}",
        squatter.describe()
    );
    let report: serde_json::Value = serde_json::from_str(
        squatter
            .stdout()
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no report: {}", squatter.describe())),
    )
    .unwrap();
    let got: Vec<&serde_json::Value> = report["got"]
        .as_array()
        .unwrap()
        .iter()
        // UDP on the TCP-only ports is no sidecar port: nothing listens for UDP there.
        .filter(|g| g[2] == "t" || g[1] == 15053)
        .collect();
    assert!(
        report["tries"].as_u64().unwrap() > 20,
        "the squatter really tried: {report}"
    );
    assert!(
        got.is_empty(),
        "the agent bound sidecar ports while the data plane was down: {got:?}"
    );

    // A new data plane serves on the same sockets; the agent's traffic flows again.
    assert!(
        wait_until(START, || ready(&topo)
            && data_plane_pid(sidecar.pid()) != victim),
        "no new data plane: {}",
        sidecar.describe()
    );
    let out = get("/after");
    assert_eq!(code(&out), "200", "{out}\n{}", sidecar.describe());
    let uris: Vec<String> = nginx
        .requests()
        .iter()
        .map(|r| r["uri"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(uris, ["/before", "/after"]);
    let metrics = topo
        .pod
        .run(as_sidecar(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:15020/metrics",
        ]))
        .stdout;
    assert!(
        metrics
            .lines()
            .any(|l| l == "palisade_sidecar_data_plane_restarts_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_first_start_that_fails_ends_run_with_the_childs_error() {
    require!("python3");
    let topo = Topology::new().unwrap();
    let out = topo.pod.run(as_sidecar(&sidecar_argv(&[
        "run",
        "--policy",
        "/nonexistent/policy.yaml",
    ])));
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("cannot read policy file"), "{out}");
    // Nothing of the sidecar is left running in the namespace.
    assert!(
        wait_until(Duration::from_secs(5), || topo.pod.pids().is_empty()),
        "{:?}",
        topo.pod.pids()
    );
}
