//! The local driver behind `palisade up`, end to end: the real `palisade up` process (as
//! root, isolated mode) and the real CLI. A sandbox's namespace, veth, capture rules and
//! processes (sidecar UID 1337; shim and agent UID 1000 with no capabilities and
//! no_new_privs) exist while it runs; delete, Ctrl-C of `palisade up`, and a restart after
//! `palisade up` was killed leave no namespace, process, veth, `/etc/netns` dir, run dir or
//! iptables rule behind (each checked).
//!
//! Addresses: each test gets its own /24 in 10.233.0.0/16 and its own bridge, so tests and a
//! developer's own `palisade up` (10.231.0.0/16, `palisade0`) never meet. No traffic leaves
//! the bridge the test's `palisade up` creates.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use palisade_e2e::*;

const TOOLS: &[&str] = &["ip", "bridge", "setpriv", "iptables-save"];
const WAIT: Duration = Duration::from_secs(60);

/// One `palisade up` with its own data dir, bridge, subnet and CLI context.
struct Up {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bridge: String,
    host_ip: String,
    args: Vec<String>,
}

impl Up {
    fn start(tag: u8) -> Up {
        let dir = tempfile::Builder::new()
            .prefix("palisade-up-test-")
            .tempdir()
            .unwrap();
        palisade_e2e::netns::make_world_readable(dir.path()).unwrap();
        // One /24 per test (by tag), not per process: nextest starts the tests as
        // processes with consecutive pids, so pid-derived subnets collided.
        let octet = 100 + tag;
        let bridge = format!("plt{}", std::process::id() % 100_000 * 10 + u32::from(tag));
        let host_ip = format!("10.233.{octet}.1");
        let admin = free_loopback_port();
        let args = vec![
            "up".to_owned(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--run-dir".into(),
            dir.path().join("run").display().to_string(),
            "--subnet".into(),
            format!("10.233.{octet}.0/24"),
            "--bridge".into(),
            bridge.clone(),
            "--port".into(),
            "8443".into(),
            "--admin-port".into(),
            admin.to_string(),
            "--dns".into(),
            host_ip.clone(),
            "--sidecar-bin".into(),
            sidecar_bin().display().to_string(),
            "--shim-bin".into(),
            workspace_bin("palisade-shim").display().to_string(),
        ];
        let mut up = Up {
            child: None,
            dir,
            bridge,
            host_ip,
            args,
        };
        up.spawn();
        up
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("up.log")).unwrap();
        let child = Command::new(workspace_bin("palisade"))
            .args(&self.args)
            .env("PALISADE_CONTEXT", self.context())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let ready = wait_until(WAIT, || {
            self.context().exists() && self.cli(&["sandbox", "list"]).status.success()
        });
        assert!(ready, "palisade up did not come up:\n{}", self.log());
    }

    fn context(&self) -> PathBuf {
        self.dir.path().join("context.json")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(workspace_bin("palisade"))
            .args(args)
            .env("PALISADE_CONTEXT", self.context())
            .env_remove("PALISADE_GATEWAY")
            .output()
            .unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "palisade {args:?} failed: {}\n{}\n--- palisade up ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn policy(&self) -> String {
        let path = self.dir.path().join("policy.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: t\nspec:\n  \
                 egress:\n    - name: host\n      hosts: [\"{}\"]\n      ports: [9]\n",
                self.host_ip
            ),
        )
        .unwrap();
        path.display().to_string()
    }

    /// `sandbox create` → the sandbox id.
    fn create(&self, name: &str, cmd: &[&str]) -> String {
        let policy = self.policy();
        let mut args = vec!["sandbox", "create", name, "--policy", &policy, "--"];
        args.extend_from_slice(cmd);
        let out = self.cli_ok(&args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["bootstrapToken"], "",
            "the driver keeps the bootstrap token"
        );
        v["sandbox"]["id"].as_str().unwrap().to_owned()
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let mut status = None;
        wait_until(WAIT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap_or_else(|| {
            let _ = child.kill();
            panic!("palisade up did not exit on {sig}:\n{}", self.log())
        })
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            wait_until(WAIT, || c.try_wait().ok().flatten().is_some());
            let _ = c.kill();
        }
    }
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What is left of one sandbox on the host.
#[derive(Debug)]
struct Footprint {
    netns: String,
    veth: String,
    etc: PathBuf,
    run_dir: PathBuf,
    pids: Vec<i32>,
}

impl Footprint {
    fn of(up: &Up, id: &str) -> Footprint {
        let short = &id[4..12];
        let netns = format!("palisade-{short}");
        Footprint {
            pids: netns_pids(&netns),
            veth: format!("pv{short}"),
            etc: Path::new("/etc/netns").join(&netns),
            run_dir: up.dir.path().join("run").join(short),
            netns,
        }
    }

    fn assert_gone(&self) {
        assert!(
            !Path::new("/run/netns").join(&self.netns).exists(),
            "namespace {} left behind",
            self.netns
        );
        assert!(
            !Path::new("/sys/class/net").join(&self.veth).exists(),
            "veth {} left behind",
            self.veth
        );
        assert!(!self.etc.exists(), "{} left behind", self.etc.display());
        assert!(
            !self.run_dir.exists(),
            "{} left behind",
            self.run_dir.display()
        );
        // Gone, or an exited zombie waiting for whoever inherited it to reap it (here
        // the container's PID 1, which may reap late): neither runs anything.
        let running = |pid: &i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
                .unwrap_or(false)
        };
        wait_until(Duration::from_secs(10), || !self.pids.iter().any(running));
        for pid in &self.pids {
            assert!(!running(pid), "process {pid} of {} still runs", self.netns);
        }
    }
}

fn netns_pids(ns: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `/proc/<pid>/status` fields we check.
#[derive(Debug, Clone)]
struct Status {
    #[allow(dead_code)] // only shown through `Debug` in assertion messages
    pid: i32,
    name: String,
    uids: String,
    gids: String,
    cap_eff: String,
    cap_prm: String,
    no_new_privs: String,
}

fn status(pid: i32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    Some(Status {
        pid,
        name: field("Name"),
        uids: field("Uid"),
        gids: field("Gid"),
        cap_eff: field("CapEff"),
        cap_prm: field("CapPrm"),
        no_new_privs: field("NoNewPrivs"),
    })
}

/// The host's own iptables rules that mention palisade (none may appear: without
/// --egress-nat the local driver never touches the host firewall).
fn host_palisade_rules() -> String {
    let mut all = String::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        if let Ok(out) = Command::new(tool).output() {
            all.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    all.lines()
        .filter(|l| l.to_lowercase().contains("palisade"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rules inside the sandbox namespace (either backend `init` picked).
fn netns_rules(ns: &str) -> String {
    let mut all = String::new();
    for argv in [
        vec!["ip", "netns", "exec", ns, "iptables-save"],
        vec!["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
    ] {
        if let Ok(out) = Command::new(argv[0]).args(&argv[1..]).output() {
            all.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    all
}

#[test]
fn create_then_delete_leaves_nothing_behind() {
    if !require_root_or_skip(TOOLS) {
        return;
    }
    let host_rules_before = host_palisade_rules();
    let mut up = Up::start(0);
    let id = up.create("t-one", &["sleep", "600"]);
    let short = id[4..12].to_owned();
    let ns = format!("palisade-{short}");

    // The agent command runs once the sidecar is ready (first JWT and policy).
    let mut procs: Vec<Status> = Vec::new();
    let agent_up = wait_until(WAIT, || {
        procs = netns_pids(&ns).into_iter().filter_map(status).collect();
        procs.iter().any(|s| s.name == "sleep")
    });
    assert!(
        agent_up,
        "the agent never started in {ns}; processes {procs:?}\n--- logs ---\n{}\n--- up ---\n{}",
        String::from_utf8_lossy(&up.cli(&["sandbox", "logs", "t-one"]).stdout),
        up.log()
    );
    let sidecar: Vec<&Status> = procs
        .iter()
        .filter(|s| s.name.starts_with("palisade-sidec"))
        .collect();
    // The keeper (holds the listening sockets) and its data plane.
    assert_eq!(
        sidecar.len(),
        2,
        "one sidecar, keeper + data plane: {procs:?}"
    );
    for s in &sidecar {
        assert_eq!(s.uids, "1337 1337 1337 1337", "{s:?}");
        assert_eq!(s.gids, "1337 1337 1337 1337", "{s:?}");
        assert_eq!(s.cap_eff, "0000000000000000", "{s:?}");
    }
    let agent: Vec<&Status> = procs
        .iter()
        .filter(|s| s.uids.starts_with("1000 "))
        .collect();
    assert!(
        agent.iter().any(|s| s.name == "sleep") && agent.iter().any(|s| s.name == "palisade-shim"),
        "shim and agent as UID 1000: {procs:?}"
    );
    for s in &agent {
        assert_eq!(s.uids, "1000 1000 1000 1000", "{s:?}");
        assert_eq!(s.gids, "1000 1000 1000 1000", "{s:?}");
        assert_eq!(s.cap_eff, "0000000000000000", "{s:?}");
        assert_eq!(s.cap_prm, "0000000000000000", "{s:?}");
        assert_eq!(s.no_new_privs, "1", "{s:?}");
    }
    // Nothing else runs in the namespace: every process is ours and accounted for.
    for s in &procs {
        assert!(
            s.uids.starts_with("1337 ") || s.uids.starts_with("1000 "),
            "unexpected process {s:?}"
        );
    }

    // Host side: veth on the bridge; capture + fence inside the namespace.
    assert!(
        Path::new("/sys/class/net")
            .join(format!("pv{short}"))
            .exists()
    );
    assert!(
        Path::new("/sys/class/net")
            .join(format!("pv{short}"))
            .join("master")
            .canonicalize()
            .unwrap()
            .ends_with(&up.bridge)
    );
    let rules = netns_rules(&ns);
    assert!(
        rules.contains("PALISADE_OUTPUT") || rules.contains("palisade"),
        "no capture rules in {ns}:\n{rules}"
    );
    assert!(
        Path::new("/etc/netns")
            .join(&ns)
            .join("resolv.conf")
            .is_file()
    );

    // The bootstrap token is the sidecar's alone.
    let token = up
        .dir
        .path()
        .join("run")
        .join(&short)
        .join("sidecar/bootstrap-token");
    let meta = std::fs::metadata(&token).unwrap();
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(meta.uid(), 1337);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    // The sidecar reached the gateway and logs are kept.
    let logs = up.cli_ok(&["sandbox", "logs", "t-one"]);
    assert!(logs.contains("sidecar |"), "{logs}");
    let list = up.cli_ok(&["sandbox", "list"]);
    assert!(list.contains(&id), "{list}");

    // Exec through the whole chain: CLI → gateway relay → the sidecar's dial-back → the
    // shim's session socket → a command as the agent UID. Retried only until the
    // sidecar's session is up (409 sandbox_not_connected before that).
    let mut last = None;
    let exec_ok = wait_until(WAIT, || {
        let out = up.cli(&["sandbox", "exec", "t-one", "--", "id", "-u"]);
        let ok = out.status.success();
        last = Some(out);
        ok
    });
    let out = last.unwrap();
    assert!(
        exec_ok,
        "exec failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");
    // The remote exit status comes back as ours.
    let out = up.cli(&["sandbox", "exec", "t-one", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    // A PTY session (-t) under a real terminal (script(1)) gets the local window size.
    let exec_tty = format!(
        "stty rows 33 cols 101; {} sandbox exec -t t-one -- stty size",
        workspace_bin("palisade").display()
    );
    let out = Command::new("script")
        .args(["-qec", &exec_tty, "/dev/null"])
        .env("PALISADE_CONTEXT", up.context())
        .env_remove("PALISADE_GATEWAY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("33 101"), "{out:?}");

    let footprint = Footprint::of(&up, &id);
    assert!(footprint.pids.len() >= 3, "{footprint:?}");
    up.cli_ok(&["sandbox", "delete", "t-one"]);
    footprint.assert_gone();
    let list = up.cli_ok(&["sandbox", "list"]);
    assert!(!list.contains(&id), "{list}");

    // palisade up itself: SIGTERM (as Ctrl-C) removes the bridge and exits 0.
    let status = up.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status}\n{}", up.log());
    assert!(!Path::new("/sys/class/net").join(&up.bridge).exists());
    assert_eq!(host_palisade_rules(), host_rules_before);
    assert!(!up.context().exists(), "the CLI context is removed on exit");
}

#[test]
fn stopping_or_killing_up_leaves_nothing_behind() {
    if !require_root_or_skip(TOOLS) {
        return;
    }
    let host_rules_before = host_palisade_rules();
    let mut up = Up::start(1);
    // A sandbox still running at Ctrl-C is stopped and removed.
    let id = up.create("t-two", &["sleep", "600"]);
    let ns = format!("palisade-{}", &id[4..12]);
    assert!(wait_until(WAIT, || netns_pids(&ns).len() >= 2));
    let footprint = Footprint::of(&up, &id);
    let status = up.signal(nix::sys::signal::Signal::SIGINT);
    assert!(status.success(), "{status}\n{}", up.log());
    footprint.assert_gone();
    assert!(!Path::new("/sys/class/net").join(&up.bridge).exists());

    // A killed `palisade up` leaves things behind; the next start with the same data dir
    // removes them before anything else.
    up.spawn();
    let id = up.create("t-three", &["sleep", "600"]);
    let ns = format!("palisade-{}", &id[4..12]);
    assert!(wait_until(WAIT, || netns_pids(&ns).len() >= 2));
    let footprint = Footprint::of(&up, &id);
    let status = up.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(!status.success());
    assert!(
        Path::new("/run/netns").join(&ns).exists(),
        "control: a killed `palisade up` cleans nothing"
    );
    up.spawn();
    footprint.assert_gone();
    let list = up.cli_ok(&["sandbox", "list"]);
    assert!(
        !list.contains(&id),
        "the killed run's sandbox is unregistered: {list}"
    );
    let status = up.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status}\n{}", up.log());
    assert!(!Path::new("/sys/class/net").join(&up.bridge).exists());
    assert_eq!(host_palisade_rules(), host_rules_before);
}

/// Review item: a sandbox's agent could read every process's command line in `/proc`,
/// its own sidecar's and other sandboxes' included. Each runs in a PID namespace of its own
/// with a private `/proc` now: checked from inside, through `sandbox exec`, as the agent.
#[test]
fn an_agent_sees_only_its_own_processes() {
    if !require_root_or_skip(&[TOOLS, &["unshare"]].concat()) {
        return;
    }
    let up = Up::start(2);
    let id_a = up.create("t-proc-a", &["sleep", "601"]);
    let id_b = up.create("t-proc-b", &["sleep", "602"]);
    for id in [&id_a, &id_b] {
        let ns = format!("palisade-{}", &id[4..12]);
        assert!(
            wait_until(WAIT, || netns_pids(&ns)
                .into_iter()
                .filter_map(status)
                .any(|s| s.name == "sleep")),
            "agent of {id} never started:\n{}",
            up.log()
        );
    }
    // Every command line a's agent can read, one per line.
    let script = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done";
    let mut last = None;
    let ok = wait_until(WAIT, || {
        let out = up.cli(&["sandbox", "exec", "t-proc-a", "--", "sh", "-c", script]);
        let ok = out.status.success();
        last = Some(out);
        ok
    });
    let out = last.unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        ok,
        "exec failed: {seen}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        seen.contains("sleep 601"),
        "control: its own agent is visible: {seen}"
    );
    for hidden in [
        "sleep 602",
        "palisade-sidecar",
        "bootstrap-token",
        "palisade up",
    ] {
        assert!(!seen.contains(hidden), "the agent sees {hidden:?}:\n{seen}");
    }
    // The shim is PID 1 of the agent's namespace.
    let out = up.cli(&["sandbox", "exec", "t-proc-a", "--", "cat", "/proc/1/comm"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "palisade-shim",
        "{out:?}"
    );
    // The same holds the other way round.
    let out = up.cli(&["sandbox", "exec", "t-proc-b", "--", "sh", "-c", script]);
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        seen.contains("sleep 602") && !seen.contains("sleep 601"),
        "{seen}"
    );
    up.cli_ok(&["sandbox", "delete", "t-proc-a"]);
    up.cli_ok(&["sandbox", "delete", "t-proc-b"]);
}
