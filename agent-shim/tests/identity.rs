//! Arbitrary UIDs without a passwd entry get a usable HOME and a user name.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a panic is the failure report

mod common;

use std::path::Path;

use common::*;

fn nss_wrapper_present() -> bool {
    let found = [
        "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
        "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
        "/usr/lib64/libnss_wrapper.so",
        "/usr/lib/libnss_wrapper.so",
    ]
    .iter()
    .any(|p| Path::new(p).is_file());
    found || !missing("libnss_wrapper.so not found; apt-get install -y libnss-wrapper")
}

const SCRIPT: &str = r#"echo "HOME=$HOME"; echo "USER=$USER"; echo "LOGNAME=$LOGNAME";
touch "$HOME/probe" && echo writable; echo "whoami=$(whoami)"; echo "idun=$(id -un)""#;

#[test]
fn arbitrary_uid_gets_home_and_name() {
    if !ready() || !nss_wrapper_present() {
        return;
    }
    let uid = 1000570001;
    let default_home = format!("/tmp/palisade-home-{uid}");
    let _ = std::fs::remove_dir_all(&default_home);
    let _ = std::fs::remove_dir_all(format!("/tmp/palisade-nss-{uid}"));
    assert!(
        nix::unistd::User::from_uid(uid.into()).unwrap().is_none(),
        "UID {uid} must have no passwd entry"
    );
    let dir = scratch();
    let mut cmd = shim_cmd(
        &hardened(uid, uid),
        dir.path(),
        &["--no-wait", "--", "sh", "-c", SCRIPT],
    );
    cmd.env("HOME", "/"); // what runtimes set for a UID without passwd entry; not writable
    let out = output(cmd);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains(&format!("HOME={default_home}\n")), "{text}");
    assert!(text.contains("writable\n"), "{text}");
    assert!(
        text.contains("USER=agent\n") && text.contains("LOGNAME=agent\n"),
        "{text}"
    );
    assert!(text.contains("whoami=agent\n"), "{text}");
    assert!(text.contains("idun=agent\n"), "{text}");
    let meta = std::fs::metadata(&default_home).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.uid(), uid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
}

#[test]
fn explicit_home_and_name() {
    if !ready() || !nss_wrapper_present() {
        return;
    }
    let uid = 1000570002;
    let dir = scratch();
    let home = dir.path().join("home/agent");
    let mut cmd = shim_cmd(
        &hardened(uid, uid),
        dir.path(),
        &[
            "--no-wait",
            "--home",
            home.to_str().unwrap(),
            "--user-name",
            "builder",
            "--",
            "sh",
            "-c",
            SCRIPT,
        ],
    );
    cmd.env("HOME", "/");
    // home/ must be creatable by the agent UID.
    std::fs::create_dir(dir.path().join("home")).unwrap();
    std::os::unix::fs::chown(dir.path().join("home"), Some(uid), Some(uid)).unwrap();
    let out = output(cmd);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains(&format!("HOME={}\n", home.display())),
        "{text}"
    );
    assert!(text.contains("writable\n"), "{text}");
    assert!(text.contains("whoami=builder\n"), "{text}");
    assert!(home.join("probe").exists());
}

#[test]
fn unwritable_explicit_home_is_refused() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let out = output(shim_cmd(
        &hardened(1000570003, 1000570003),
        dir.path(),
        &["--no-wait", "--home", "/proc", "--", "true"],
    ));
    assert_eq!(out.status.code(), Some(123), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--home /proc is not a writable directory"),
        "{}",
        stderr(&out)
    );
}
