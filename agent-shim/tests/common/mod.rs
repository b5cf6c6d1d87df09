//! Helpers for running the real `palisade-shim` binary as an unprivileged UID under
//! `setpriv` (the tests themselves run as root).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: panicking is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// Hang guard only (never a timing assertion).
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// The agent UID of the defaults.
pub const AGENT_UID: u32 = 1000;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip (outside CI) or fail (under CI=true) when a prerequisite is missing.
pub fn missing(what: &str) -> bool {
    if ci() {
        panic!("prerequisite missing under CI=true: {what}");
    }
    eprintln!("SKIP: {what}");
    true
}

/// True when the test can run: root and setpriv are available.
pub fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return !missing("these tests need root (to drop to an agent UID with setpriv)");
    }
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !setpriv.is_ok_and(|s| s.success()) {
        return !missing("setpriv not found; install util-linux (apt-get install -y util-linux)");
    }
    true
}

/// The shim binary, at a path every UID can execute.
pub fn shim() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_palisade-shim"));
        let ok = Command::new("setpriv")
            .args([
                "--reuid",
                "1000570099",
                "--regid",
                "1000570099",
                "--clear-groups",
                "test",
                "-x",
            ])
            .arg(&built)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return built;
        }
        let dir = tempfile::Builder::new()
            .prefix("palisade-shim-bin")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("palisade-shim");
        std::fs::copy(&built, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
}

/// A scratch dir every UID can write to.
pub fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("palisade-shim-test")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// `setpriv` arguments for a fully hardened agent process with `uid`/`gid`.
pub fn hardened(uid: u32, gid: u32) -> Vec<String> {
    vec![
        "--reuid".into(),
        uid.to_string(),
        "--regid".into(),
        gid.to_string(),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--no-new-privs".into(),
    ]
}

/// `setpriv <setpriv_args> palisade-shim <shim_args>`, with cwd = `dir`,
/// `--exit-file dir/agent-exit`, and a CA bundle path that does not exist unless a test
/// passes its own `--ca-bundle`.
pub fn shim_cmd(setpriv_args: &[String], dir: &Path, shim_args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(setpriv_args).arg(shim()).current_dir(dir);
    cmd.arg("--exit-file").arg(dir.join("agent-exit"));
    if !shim_args.contains(&"--ca-bundle") {
        cmd.arg("--ca-bundle").arg(dir.join("no-ca-bundle.pem"));
    }
    cmd.args(shim_args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run to completion (with the hang guard).
pub fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn setpriv");
    wait(child)
}

/// Wait for a spawned child (with the hang guard).
pub fn wait(child: Child) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG_GUARD) {
        Ok(out) => out.expect("wait for the shim"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the shim did not finish within the hang guard");
        }
    }
}

/// Poll for `path` to exist (hang guard only).
pub fn wait_for_file(path: &Path) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
