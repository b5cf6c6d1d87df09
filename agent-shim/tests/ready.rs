//! Waiting for the sidecar's ready file.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a panic is the failure report

mod common;

use std::io::{BufRead, BufReader};

use common::*;

#[test]
fn times_out_with_a_clear_error() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let file = dir.path().join("ready");
    let ran = dir.path().join("ran");
    let out = output(shim_cmd(
        &hardened(AGENT_UID, AGENT_UID),
        dir.path(),
        &[
            "--ready-file",
            file.to_str().unwrap(),
            "--ready-timeout",
            "300ms",
            "--",
            "touch",
            ran.to_str().unwrap(),
        ],
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(122), "{err}");
    assert!(err.contains("sidecar not ready"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("--no-wait"), "{err}");
    assert!(!ran.exists());
}

#[test]
fn proceeds_once_the_file_appears() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let file = dir.path().join("ready");
    let ran = dir.path().join("ran");
    let mut child = shim_cmd(
        &hardened(AGENT_UID, AGENT_UID),
        dir.path(),
        &[
            "--ready-file",
            file.to_str().unwrap(),
            "--ready-timeout",
            "100s",
            "--",
            "touch",
            ran.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    // Create the file only once the shim says it is waiting, so the wait really happened.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let waiting = line.contains("waiting for the sidecar");
        seen.push(line);
        if waiting {
            break;
        }
    }
    assert!(
        seen.last()
            .is_some_and(|l| l.contains("waiting for the sidecar")),
        "{seen:?}"
    );
    assert!(!ran.exists(), "ran before the sidecar was ready");
    std::fs::write(&file, "ready pid=1\n").unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = wait(child);
    assert_eq!(out.status.code(), Some(0), "{seen:?} {rest:?}");
    assert!(ran.exists());
    assert!(rest.iter().any(|l| l.contains("sidecar ready")), "{rest:?}");
}

#[test]
fn sigterm_while_waiting_ends_the_shim_without_starting_the_workload() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let file = dir.path().join("ready");
    let ran = dir.path().join("ran");
    let mut child = shim_cmd(
        &hardened(AGENT_UID, AGENT_UID),
        dir.path(),
        &[
            "--ready-file",
            file.to_str().unwrap(),
            "--ready-timeout",
            "100s",
            "--",
            "touch",
            ran.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    let shim = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let waiting = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("waiting for the sidecar"));
    assert!(waiting, "the shim never said it was waiting");
    nix::sys::signal::kill(shim, nix::sys::signal::Signal::SIGTERM).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = wait(child);
    assert_eq!(out.status.code(), Some(143), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("received SIGTERM while waiting for the sidecar")),
        "{rest:?}"
    );
    assert!(!ran.exists(), "the workload must not start");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent-exit")).unwrap(),
        "143\n"
    );
}
