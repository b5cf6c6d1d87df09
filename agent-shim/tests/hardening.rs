//! The shim refuses to start unless the process is hardened (runs the real binary).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a panic is the failure report

mod common;

use common::*;

#[test]
fn refuses_root() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let ran = dir.path().join("ran");
    // Run as root directly, with the full root capability set of the test process.
    let mut cmd = std::process::Command::new(shim());
    cmd.args(["--no-wait", "--exit-file"])
        .arg(dir.path().join("agent-exit"))
        .args(["--", "touch"])
        .arg(&ran);
    let out = output(cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(121), "{err}");
    assert!(err.contains("runs as UID 0 (root)"), "{err}");
    assert!(err.contains("runAsNonRoot: true"), "{err}");
    assert!(err.contains("capabilities.drop: [ALL]"), "{err}");
    assert!(!ran.exists(), "the workload must not run");
    // The sidecar is told even about a refused start.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent-exit")).unwrap(),
        "121\n"
    );
}

#[test]
fn allow_insecure_downgrades_to_a_warning() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let ran = dir.path().join("ran");
    let mut cmd = std::process::Command::new(shim());
    cmd.args(["--no-wait", "--allow-insecure", "--exit-file"])
        .arg(dir.path().join("agent-exit"))
        .args(["--", "touch"])
        .arg(&ran);
    let out = output(cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: --allow-insecure: starting although this container is NOT hardened"),
        "{err}"
    );
    assert!(err.contains("runs as UID 0"), "{err}");
    assert!(ran.exists());
}

#[test]
fn refuses_capabilities_and_names_the_set() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let ran = dir.path().join("ran");
    let caps: Vec<String> = [
        "--reuid",
        "1000",
        "--regid",
        "1000",
        "--clear-groups",
        "--inh-caps",
        "+net_raw",
        "--ambient-caps",
        "+net_raw",
        "--no-new-privs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Precondition: setpriv really hands the process net_raw.
    let pre = output({
        let mut c = std::process::Command::new("setpriv");
        c.args(&caps).args(["grep", "^CapAmb", "/proc/self/status"]);
        c.stdout(std::process::Stdio::piped());
        c
    });
    assert!(
        stdout(&pre).contains("0000000000002000"),
        "setpriv did not grant net_raw: {}",
        stdout(&pre)
    );

    let out = output(shim_cmd(
        &caps,
        dir.path(),
        &["--no-wait", "--", "touch", ran.to_str().unwrap()],
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(121), "{err}");
    assert!(
        err.contains("effective capability set is not empty (net_raw)"),
        "{err}"
    );
    assert!(
        err.contains("ambient capability set is not empty (net_raw)"),
        "{err}"
    );
    assert!(
        err.contains("securityContext.capabilities.drop: [ALL]"),
        "{err}"
    );
    assert!(!err.contains("UID 0"), "{err}");
    assert!(!ran.exists(), "the workload must not run");
}

#[test]
fn refuses_root_group_unless_allowed() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let args = hardened(1000, 0);
    let out = output(shim_cmd(&args, dir.path(), &["--no-wait", "--", "true"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(121), "{err}");
    assert!(err.contains("runs as GID 0"), "{err}");
    assert!(err.contains("runAsGroup"), "{err}");

    let out = output(shim_cmd(
        &args,
        dir.path(),
        &["--no-wait", "--allow-root-group", "--", "id", "-g"],
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "0");
}

#[test]
fn passes_when_hardened() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let out = output(shim_cmd(
        &hardened(1000, 1000),
        dir.path(),
        &[
            "--no-wait",
            "--",
            "grep",
            "-E",
            "^(CapEff|CapPrm|CapAmb|NoNewPrivs)",
            "/proc/self/status",
        ],
    ));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("CapAmb:\t0000000000000000"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(
        !stderr(&out).contains("NoNewPrivs was not set"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sets_no_new_privs_itself() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let args: Vec<String> = hardened(1000, 1000)
        .into_iter()
        .filter(|a| a != "--no-new-privs")
        .collect();
    // Precondition: without the flag the process really starts with NoNewPrivs 0.
    let pre = output({
        let mut c = std::process::Command::new("setpriv");
        c.args(&args)
            .args(["grep", "^NoNewPrivs", "/proc/self/status"]);
        c.stdout(std::process::Stdio::piped());
        c
    });
    assert!(
        stdout(&pre).contains("NoNewPrivs:\t0"),
        "precondition: {}",
        stdout(&pre)
    );

    let out = output(shim_cmd(
        &args,
        dir.path(),
        &[
            "--no-wait",
            "--",
            "grep",
            "^NoNewPrivs",
            "/proc/self/status",
        ],
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("NoNewPrivs:\t1"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("the shim set it itself"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("allowPrivilegeEscalation: false"),
        "{}",
        stderr(&out)
    );
}
