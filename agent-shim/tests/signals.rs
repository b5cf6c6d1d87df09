//! PID 1 duties of the real binary: exit codes, signal forwarding, reaping.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a panic is the failure report

mod common;

use std::process::Command;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn agent(dir: &std::path::Path, script: &str) -> Command {
    shim_cmd(
        &hardened(AGENT_UID, AGENT_UID),
        dir,
        &[
            "--no-wait",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            dir.to_str().unwrap(),
        ],
    )
}

#[test]
fn exit_code_is_propagated_and_reported() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let out = output(agent(dir.path(), "exit 7"));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent-exit")).unwrap(),
        "7\n"
    );
}

#[test]
fn workload_starts_with_a_clean_signal_mask() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let out = output(shim_cmd(
        &hardened(AGENT_UID, AGENT_UID),
        dir.path(),
        &[
            "--no-wait",
            "--",
            "grep",
            "-E",
            "^Sig(Blk|Ign)",
            "/proc/self/status",
        ],
    ));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        text.contains("SigBlk:\t0000000000000000"),
        "the shim's blocked signals leaked: {text}"
    );
    let ign = text
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:\t"))
        .unwrap();
    let ign = u64::from_str_radix(ign.trim(), 16).unwrap();
    // SIGTERM (15), SIGPIPE (13), SIGCHLD (17) must not be ignored by the workload.
    for sig in [13, 15, 17] {
        assert_eq!(ign & (1 << (sig - 1)), 0, "signal {sig} ignored: {text}");
    }
}

#[test]
fn missing_command_is_127() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let out = output(shim_cmd(
        &hardened(AGENT_UID, AGENT_UID),
        dir.path(),
        &["--no-wait", "--", "/nonexistent/agent"],
    ));
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("command not found"),
        "{}",
        stderr(&out)
    );
}

/// Start `script`, wait for it to create `started`, send `sig` to the shim, return the output.
fn signal_after_start(script: &str, sig: Signal) -> (std::process::Output, tempfile::TempDir) {
    let dir = scratch();
    let child = agent(dir.path(), script).spawn().unwrap();
    // setpriv execs the shim, so this pid is the shim's.
    let shim = Pid::from_raw(child.id() as i32);
    wait_for_file(&dir.path().join("started"));
    kill(shim, sig).unwrap();
    (wait(child), dir)
}

#[test]
fn sigterm_ends_the_workload_with_143() {
    if !ready() {
        return;
    }
    let (out, dir) = signal_after_start(
        r#"echo up > "$1/started"; exec sleep 1000"#,
        Signal::SIGTERM,
    );
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent-exit")).unwrap(),
        "143\n"
    );
}

#[test]
fn trapped_sigterm_exit_code_is_kept() {
    if !ready() {
        return;
    }
    let (out, _dir) = signal_after_start(
        r#"trap 'exit 3' TERM; echo up > "$1/started"; while :; do sleep 0.1; done"#,
        Signal::SIGTERM,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn other_signals_are_forwarded() {
    if !ready() {
        return;
    }
    for (sig, code) in [
        (Signal::SIGUSR1, 10),
        (Signal::SIGHUP, 11),
        (Signal::SIGINT, 12),
    ] {
        let script = format!(
            r#"trap 'exit {code}' {}; echo up > "$1/started"; while :; do sleep 0.1; done"#,
            sig.as_str().trim_start_matches("SIG")
        );
        let (out, _dir) = signal_after_start(&script, sig);
        assert_eq!(out.status.code(), Some(code), "{sig}: {}", stderr(&out));
    }
}

#[test]
fn orphans_are_reparented_to_the_shim_and_reaped() {
    if !ready() {
        return;
    }
    let dir = scratch();
    // A subshell starts a background job and exits: the job is orphaned and must be
    // reparented to the shim (child subreaper — the shim is not PID 1 here). Once it
    // exits, only the shim can reap it; an unreaped zombie keeps /proc/<pid> forever.
    let script = r#"
        d=$1
        ( sh -c "while [ ! -e $d/go ]; do sleep 0.05; done" >/dev/null 2>&1 & echo $! > "$d/orphan" )
        o=$(cat "$d/orphan")
        read -r _ _ _ pp _ < /proc/$o/stat
        if [ "$pp" != "$PPID" ]; then touch "$d/go"; echo "orphan $o has parent $pp, not the shim $PPID"; exit 2; fi
        echo reparented
        touch "$d/go"
        i=0
        while [ -e /proc/$o ]; do
            i=$((i+1))
            if [ $i -gt 600 ]; then echo "orphan not reaped: $(cat /proc/$o/stat)"; exit 1; fi
            sleep 0.05
        done
        echo reaped
    "#;
    let out = output(agent(dir.path(), script));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("reparented") && text.contains("reaped"),
        "{text}"
    );
}
