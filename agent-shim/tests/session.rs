//! Exec sessions of the real binary: the shim runs as the agent UID with a session
//! socket in a scratch dir; a small Python client speaking the frame format connects as
//! the sidecar UID (or as someone else, to be refused).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{Value, json};

const SIDECAR_UID: u32 = 1337;

/// The client: `client.py SOCKET ACTIONS_JSON`; prints one JSON report on stdout.
/// Actions: ["open", {...}], ["stdin", text], ["eof"], ["resize", rows, cols],
/// ["signal", n], ["expect", text] (wait until stdout contains it), ["close"].
const CLIENT: &str = r#"
import json, socket, struct, sys, threading

NAMES = {16: "stdout", 17: "stderr", 18: "exit", 19: "error"}
out = {"stdout": b"", "stderr": b""}
events = []
cond = threading.Condition()
state = {"done": False}

def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf

def reader(sock):
    while True:
        hdr = recv_exact(sock, 5)
        if hdr is None:
            break
        t, n = struct.unpack(">BI", hdr)
        payload = recv_exact(sock, n) if n else b""
        if payload is None:
            break
        with cond:
            name = NAMES.get(t, str(t))
            if name in out:
                out[name] += payload
            else:
                events.append({"type": name, "body": json.loads(payload)})
            cond.notify_all()
    with cond:
        state["done"] = True
        cond.notify_all()

def report(code):
    print(json.dumps({
        "stdout": out["stdout"].decode(errors="replace"),
        "stderr": out["stderr"].decode(errors="replace"),
        "events": events,
        "done": state["done"],
    }))
    sys.stdout.flush()
    sys.exit(code)

def send(sock, t, payload=b""):
    try:
        sock.sendall(struct.pack(">BI", t, len(payload)) + payload)
    except OSError:
        pass  # refused and closed by the shim: what it sent is still read

def main():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    threading.Thread(target=reader, args=(sock,), daemon=True).start()
    for a in json.loads(sys.argv[2]):
        kind = a[0]
        if kind == "open":
            send(sock, 1, json.dumps(a[1]).encode())
        elif kind == "stdin":
            send(sock, 2, a[1].encode())
        elif kind == "eof":
            send(sock, 3)
        elif kind == "resize":
            send(sock, 4, json.dumps({"rows": a[1], "cols": a[2]}).encode())
        elif kind == "signal":
            send(sock, 5, bytes([a[1]]))
        elif kind == "expect":
            want = a[1].encode()
            with cond:
                cond.wait_for(lambda: want in out["stdout"] or state["done"], timeout=100)
                if want not in out["stdout"]:
                    report(3)
        elif kind == "close":
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            report(0)
    with cond:
        cond.wait_for(lambda: state["done"], timeout=100)
    report(0)

main()
"#;

fn python() -> Option<&'static str> {
    // Not a pyenv shim under /root: the client runs as other UIDs.
    let path = "/usr/bin/python3";
    if Path::new(path).exists() {
        Some(path)
    } else {
        missing("/usr/bin/python3 not found; install python3 (apt-get install -y python3)");
        None
    }
}

/// A shim serving sessions, with a workload that runs until `end` is touched.
struct Shim {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Shim {
    fn start(extra: &[&str]) -> Shim {
        Self::start_with(extra, |_| {})
    }

    fn start_with(extra: &[&str], prepare: impl FnOnce(&mut Command)) -> Shim {
        let dir = scratch();
        std::fs::write(dir.path().join("client.py"), CLIENT).unwrap();
        let socket = dir.path().join("shim.sock");
        let mut args: Vec<&str> = vec!["--no-wait", "--session-socket", socket.to_str().unwrap()];
        args.extend_from_slice(extra);
        let script = r#"echo $$ > "$1/workload"; while [ ! -e "$1/end" ]; do sleep 0.05; done; echo workload-done"#;
        args.extend_from_slice(&["--", "sh", "-c", script, "sh", dir.path().to_str().unwrap()]);
        let mut cmd = shim_cmd(&hardened(AGENT_UID, AGENT_UID), dir.path(), &args);
        prepare(&mut cmd);
        let child = cmd.spawn().unwrap();
        let shim = Shim {
            child: Some(child),
            dir,
        };
        wait_for_file(&socket);
        wait_for_file(&shim.path("workload"));
        shim
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Run the client as `uid` with these actions; returns its JSON report.
    fn client(&self, uid: u32, actions: Value) -> Value {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string()])
            .arg("--clear-groups")
            .arg(python().unwrap())
            .arg(self.path("client.py"))
            .arg(self.path("shim.sock"))
            .arg(actions.to_string())
            .stdin(Stdio::null());
        let out = output(cmd);
        let text = stdout(&out);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "client report is not JSON ({e}): {text}\nclient stderr: {}",
                stderr(&out)
            )
        })
    }

    /// End the workload and return the shim's output.
    fn finish(mut self) -> std::process::Output {
        std::fs::write(self.path("end"), "").unwrap();
        wait(self.child.take().unwrap())
    }
}

impl Drop for Shim {
    /// End the workload (and with it the shim) before the scratch dir goes away;
    /// kill both only if that does not work.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = std::fs::write(self.path("end"), "");
        for _ in 0..500 {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Some(workload) = std::fs::read_to_string(self.path("workload"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(workload),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn open(argv: &[&str], tty: bool) -> Value {
    json!(["open", {"argv": argv, "tty": tty, "rows": 24, "cols": 80}])
}

fn exit_of(report: &Value) -> Value {
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "exactly one final frame: {report}");
    assert_eq!(events[0]["type"], "exit", "{report}");
    assert_eq!(report["done"], true, "the shim closes after exit: {report}");
    events[0]["body"].clone()
}

fn ready_for_sessions() -> bool {
    ready() && python().is_some()
}

#[test]
fn id_runs_as_the_agent_with_the_workload_environment() {
    if !ready_for_sessions() {
        return;
    }
    let bundle_dir = scratch();
    let bundle = bundle_dir.path().join("ca.pem");
    std::fs::write(&bundle, "not really a bundle").unwrap();
    let shim = Shim::start_with(&["--ca-bundle", bundle.to_str().unwrap()], |cmd| {
        cmd.env("GITHUB_TOKEN", "ghp_must_not_leak");
    });
    let report = shim.client(
        SIDECAR_UID,
        json!([open(
            &[
                "sh",
                "-c",
                "id -u; echo token=${GITHUB_TOKEN:-unset}; echo trust=$SSL_CERT_FILE"
            ],
            false
        )]),
    );
    let expected = format!(
        "{AGENT_UID}\ntoken=unset\ntrust={}\n",
        bundle.to_str().unwrap()
    );
    assert_eq!(report["stdout"], expected, "{report}");
    assert_eq!(exit_of(&report), json!({"code": 0, "signal": null}));
    let out = shim.finish();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("workload-done"));
    assert!(
        stderr(&out).contains("session 1: started sh as pid"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn stdin_is_piped_through_and_eof_ends_it() {
    if !ready_for_sessions() {
        return;
    }
    let shim = Shim::start(&[]);
    let report = shim.client(
        SIDECAR_UID,
        json!([
            open(&["cat"], false),
            ["stdin", "hello\n"],
            ["stdin", "world\n"],
            ["eof"]
        ]),
    );
    assert_eq!(report["stdout"], "hello\nworld\n", "{report}");
    assert_eq!(exit_of(&report)["code"], 0);

    // stderr is its own stream.
    let report = shim.client(
        SIDECAR_UID,
        json!([open(&["sh", "-c", "echo out; echo err >&2"], false)]),
    );
    assert_eq!(report["stdout"], "out\n", "{report}");
    assert_eq!(report["stderr"], "err\n", "{report}");
}

#[test]
fn pty_session_has_a_terminal_and_follows_resizes() {
    if !ready_for_sessions() {
        return;
    }
    let shim = Shim::start(&[]);
    let script = "tty; stty size; echo READY; read x; stty size; exit 3";
    let report = shim.client(
        SIDECAR_UID,
        json!([
            open(&["sh", "-c", script], true),
            ["expect", "READY"],
            ["resize", 50, 132],
            ["stdin", "go\n"]
        ]),
    );
    let out = report["stdout"].as_str().unwrap();
    assert!(out.contains("/dev/pts/"), "not a pty: {report}");
    assert!(out.contains("24 80"), "initial size not applied: {report}");
    assert!(out.contains("50 132"), "resize not applied: {report}");
    assert_eq!(report["stderr"], "", "a pty merges stderr: {report}");
    assert_eq!(exit_of(&report), json!({"code": 3, "signal": null}));

    // Without tty there is no terminal.
    let report = shim.client(SIDECAR_UID, json!([open(&["tty"], false)]));
    assert_eq!(report["stdout"], "not a tty\n", "{report}");
    assert_eq!(exit_of(&report)["code"], 1);
}

#[test]
fn pty_session_is_its_own_session_with_job_control() {
    if !ready_for_sessions() {
        return;
    }
    let shim = Shim::start(&[]);
    // The command leads its own session and process group, and is the terminal's
    // foreground group (so ^C reaches it).
    let script = r#"read -r _ _ _ _ pgrp sid _ tpgid _ < /proc/$$/stat; echo "pid=$$ pgrp=$pgrp sid=$sid tpgid=$tpgid""#;
    let report = shim.client(SIDECAR_UID, json!([open(&["sh", "-c", script], true)]));
    let line = report["stdout"].as_str().unwrap().trim().to_owned();
    let fields: Vec<&str> = line
        .split_whitespace()
        .map(|kv| kv.split('=').nth(1).unwrap())
        .collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert!(
        fields.iter().all(|f| *f == fields[0]),
        "not a session leader in the foreground: {line}"
    );
    assert_eq!(exit_of(&report)["code"], 0);

    // ^C typed into the terminal interrupts the foreground command.
    let report = shim.client(
        SIDECAR_UID,
        json!([
            open(&["sh", "-c", "echo started; exec sleep 1000"], true),
            ["expect", "started"],
            ["stdin", "\u{3}"]
        ]),
    );
    assert_eq!(exit_of(&report), json!({"code": null, "signal": 2}));
}

#[test]
fn exit_codes_and_signals_are_propagated() {
    if !ready_for_sessions() {
        return;
    }
    let shim = Shim::start(&[]);
    let report = shim.client(SIDECAR_UID, json!([open(&["sh", "-c", "exit 7"], false)]));
    assert_eq!(exit_of(&report), json!({"code": 7, "signal": null}));

    let report = shim.client(
        SIDECAR_UID,
        json!([open(&["sh", "-c", "kill -KILL $$"], false)]),
    );
    assert_eq!(exit_of(&report), json!({"code": null, "signal": 9}));

    // A Signal frame reaches the command's process group.
    let report = shim.client(
        SIDECAR_UID,
        json!([
            open(&["sh", "-c", "echo started; exec sleep 1000"], false),
            ["expect", "started"],
            ["signal", 15]
        ]),
    );
    assert_eq!(exit_of(&report), json!({"code": null, "signal": 15}));

    // A command that does not exist: 127 and the reason on stderr.
    let report = shim.client(SIDECAR_UID, json!([open(&["/nonexistent/cmd"], false)]));
    assert_eq!(exit_of(&report)["code"], 127);
    assert!(
        report["stderr"]
            .as_str()
            .unwrap()
            .contains("command not found"),
        "{report}"
    );
}

#[test]
fn only_the_sidecar_uid_may_connect() {
    if !ready_for_sessions() {
        return;
    }
    let shim = Shim::start(&[]);
    let marker = shim.path("ran");
    let touch = format!("touch {}", marker.display());
    for uid in [4242, AGENT_UID] {
        let report = shim.client(uid, json!([open(&["sh", "-c", &touch], false)]));
        let events = report["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{report}");
        assert_eq!(events[0]["type"], "error", "{report}");
        let message = events[0]["body"]["message"].as_str().unwrap();
        assert!(message.contains("only the sidecar"), "{message}");
        assert_eq!(report["done"], true, "the connection is closed: {report}");
    }
    assert!(!marker.exists(), "a refused peer ran a command");
    // The sidecar UID still works afterwards.
    let report = shim.client(SIDECAR_UID, json!([open(&["sh", "-c", &touch], false)]));
    assert_eq!(exit_of(&report)["code"], 0);
    assert!(marker.exists());
    let out = shim.finish();
    let log = stderr(&out);
    assert!(
        log.contains("refused a session connection from UID 4242"),
        "{log}"
    );
    assert!(log.contains("(2 refused so far)"), "{log}");
}

#[test]
fn the_socket_is_world_connectable_and_a_stale_one_is_replaced() {
    if !ready_for_sessions() {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let first = Shim::start(&[]);
    let meta = std::fs::metadata(first.path("shim.sock")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    assert_eq!(meta.uid(), AGENT_UID, "created by the shim as the agent");
    let _ = first.finish();
    // The socket file of the finished shim is still there: start a new shim on it.
    let dir = scratch();
    let socket = dir.path().join("shim.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let out = output(shim_cmd(
        &hardened(AGENT_UID, AGENT_UID),
        dir.path(),
        &[
            "--no-wait",
            "--session-socket",
            socket.to_str().unwrap(),
            "--",
            "true",
        ],
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("serving sessions on"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn session_limit_refuses_extra_sessions() {
    if !ready_for_sessions() {
        return;
    }
    let shim = Shim::start(&["--max-sessions", "1"]);
    let (started, release) = (shim.path("started"), shim.path("release"));
    let script = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.05; done; echo released",
        started.display(),
        release.display()
    );
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "1337", "--regid", "1337", "--clear-groups"])
        .arg(python().unwrap())
        .arg(shim.path("client.py"))
        .arg(shim.path("shim.sock"))
        .arg(json!([open(&["sh", "-c", &script], false)]).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let first = cmd.spawn().unwrap();
    // Its command runs, so it holds the only slot.
    wait_for_file(&started);
    let second = shim.client(SIDECAR_UID, json!([open(&["true"], false)]));
    std::fs::write(&release, "").unwrap();
    let first = wait(first);
    let events = second["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{second}");
    assert_eq!(events[0]["type"], "error", "{second}");
    let message = events[0]["body"]["message"].as_str().unwrap();
    assert!(message.contains("too many sessions"), "{message}");
    let first: Value = serde_json::from_str(stdout(&first).trim()).unwrap();
    assert_eq!(first["stdout"], "released\n", "{first}");
    assert_eq!(exit_of(&first)["code"], 0, "{first}");
    // The slot is free again.
    let report = shim.client(SIDECAR_UID, json!([open(&["true"], false)]));
    assert_eq!(exit_of(&report)["code"], 0, "{report}");
}

#[test]
fn client_hang_up_sends_sighup_to_the_command() {
    if !ready_for_sessions() {
        return;
    }
    let shim = Shim::start(&[]);
    let hup = shim.path("hup");
    let script = format!(
        r#"trap 'echo hup > {}; exit 0' HUP; echo started; while :; do sleep 0.05; done"#,
        hup.display()
    );
    let report = shim.client(
        SIDECAR_UID,
        json!([
            open(&["sh", "-c", &script], false),
            ["expect", "started"],
            ["close"]
        ]),
    );
    assert!(
        report["stdout"].as_str().unwrap().contains("started"),
        "{report}"
    );
    wait_for_file(&hup);
}

#[test]
fn workload_keeps_running_and_orphans_are_reaped_during_sessions() {
    if !ready_for_sessions() {
        return;
    }
    let shim = Shim::start(&[]);
    let workload: i32 = std::fs::read_to_string(shim.path("workload"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The session's command leaves an orphan behind; it is reparented to the shim
    // (subreaper) and must be reaped, not left a zombie, while the session status is
    // still delivered to the session.
    let orphan_file = shim.path("orphan");
    let script = format!(
        "( sleep 0.2 & echo $! > {} ); exit 5",
        orphan_file.display()
    );
    for _ in 0..3 {
        let report = shim.client(SIDECAR_UID, json!([open(&["sh", "-c", &script], false)]));
        assert_eq!(exit_of(&report), json!({"code": 5, "signal": null}));
        let orphan: i32 = std::fs::read_to_string(&orphan_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stat = format!("/proc/{orphan}/stat");
        let start = std::time::Instant::now();
        while let Ok(text) = std::fs::read_to_string(&stat) {
            // It may be running, or briefly a zombie before the reaper gets SIGCHLD.
            assert!(
                start.elapsed() < HANG_GUARD,
                "orphan {orphan} never reaped: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    // The workload was never disturbed.
    assert!(Path::new(&format!("/proc/{workload}")).exists());
    assert!(Path::new(&format!("/proc/{}", shim.pid())).exists());
    let out = shim.finish();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("workload-done"));
}
