//! The local driver's processes: a [`ProcessPlan`] rendered into a command
//! line (`unshare` for the PID namespace, `ip netns exec` for the network,
//! `setpriv` for the UID and capabilities), started in a process group of its
//! own with an empty environment apart from `PATH`, `LANG` and the plan's
//! variables, its output pumped into the sandbox log; and stopped again.
//!
//! Must never: pass the gateway's own environment to a sandbox process, run
//! a [`Privilege::Dropped`] process without `setpriv`, or signal a process
//! group it did not start.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::ledger::{self, ProcRecord};
use super::logs::{LogSink, pump};
use crate::driver::contract::DriverError;
use crate::driver::plan::{Privilege, ProcessPlan};

/// How long processes get after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The one variable besides `LANG` and the plan's that sandbox processes get.
pub(super) const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A process group we started.
#[derive(Debug)]
pub(super) struct Proc {
    pub label: &'static str,
    pub child: Arc<Mutex<Child>>,
    pub record: ProcRecord,
}

/// The command line of `plan`: `bin` and its arguments, inside the wrappers
/// its isolation asks for, in `netns` when given.
pub(super) fn command_line(plan: &ProcessPlan, netns: Option<&str>, bin: &Path) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::new();
    if plan.own_pid_namespace {
        // A PID namespace of its own (the program is its PID 1) and a /proc that shows
        // only it; unshare stays behind as root in the host namespaces, waits, passes
        // the exit status on, and takes the tree down with it if it is killed.
        argv.extend(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child=SIGKILL",
                "--",
            ]
            .map(OsString::from),
        );
    }
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns].map(OsString::from));
    }
    match plan.privilege {
        Privilege::Dropped { uid, gid } => argv.extend(
            [
                "setpriv".to_owned(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_owned(),
                "--inh-caps=-all".to_owned(),
                "--ambient-caps=-all".to_owned(),
                "--bounding-set=-all".to_owned(),
                "--no-new-privs".to_owned(),
                "--".to_owned(),
            ]
            .map(OsString::from),
        ),
        // Root in the namespace (init), or the driver's own user (development).
        Privilege::NetworkAdmin | Privilege::Unchanged => {}
    }
    argv.push(bin.into());
    argv.extend(plan.args.iter().cloned());
    argv
}

/// Run `palisade-sidecar init` to completion in `ns`; its stderr goes to the log.
pub(super) fn run_init(
    plan: &ProcessPlan,
    ns: &str,
    bin: &Path,
    log: &LogSink,
) -> Result<(), DriverError> {
    let argv = command_line(plan, Some(ns), bin);
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", PATH_ENV)
        .envs(plan.env.iter().cloned())
        .output()
        .map_err(|e| DriverError::failed(format!("cannot run `ip netns exec`: {e}")))?;
    let label = plan.part.label();
    for line in out.stderr.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        log.line(label, line);
    }
    if !out.status.success() {
        return Err(DriverError::failed(format!(
            "`palisade-sidecar init` failed in {ns}: {}; see `palisade sandbox logs`",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Start one process group as `plan` says, in `netns` when given.
pub(super) fn spawn(
    plan: &ProcessPlan,
    netns: Option<&str>,
    bin: &Path,
    log: &Arc<LogSink>,
) -> Result<Proc, DriverError> {
    let label = plan.part.label();
    let argv = command_line(plan, netns, bin);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", PATH_ENV)
        .env("LANG", "C.UTF-8")
        .envs(plan.env.iter().cloned())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        DriverError::failed(format!(
            "cannot start the {label} ({}): {e}; check the path (--sidecar-bin/--shim-bin) \
             and that util-linux `setpriv` is installed",
            bin.display()
        ))
    })?;
    let pid = child.id() as i32;
    let record = ProcRecord {
        pid,
        start_time: ledger::start_time(pid).unwrap_or(0),
    };
    if let Some(out) = child.stdout.take() {
        pump(out, log.clone(), label);
    }
    if let Some(err) = child.stderr.take() {
        pump(err, log.clone(), label);
    }
    let child = Arc::new(Mutex::new(child));
    watch(label, child.clone(), log.clone());
    Ok(Proc {
        label,
        child,
        record,
    })
}

/// Log how a process ended, once (the agent's end is also kept for `logs`).
fn watch(label: &'static str, child: Arc<Mutex<Child>>, log: Arc<LogSink>) {
    std::thread::spawn(move || {
        loop {
            let status = child.lock().try_wait();
            match status {
                Ok(Some(status)) => {
                    let how = describe(status);
                    if label == "agent" {
                        log.agent_exited(how);
                    } else {
                        log.line("palisade", format!("{label} {how}").as_bytes());
                    }
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(_) => return,
            }
        }
    });
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".to_owned(),
    }
}

/// SIGTERM every process group, wait up to [`STOP_GRACE`], then SIGKILL.
pub(super) fn stop(procs: &[Proc]) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let alive = |p: &Proc| matches!(p.child.lock().try_wait(), Ok(None));
    for p in procs.iter().filter(|&p| alive(p)) {
        let _ = killpg(Pid::from_raw(p.record.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while procs.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in procs {
        // Also the group's other members, even when the leader is gone.
        let _ = killpg(Pid::from_raw(p.record.pid), Signal::SIGKILL);
        let _ = p.child.lock().wait();
        tracing::debug!(process = p.label, pid = p.record.pid, "stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::plan::{Part, Program};

    fn plan(privilege: Privilege, own_pid_namespace: bool) -> ProcessPlan {
        ProcessPlan {
            part: Part::Sidecar,
            program: Program::Sidecar,
            args: vec!["run".into(), "--x".into()],
            env: Vec::new(),
            privilege,
            own_pid_namespace,
        }
    }

    fn strings(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn isolated_processes_are_wrapped_in_unshare_netns_and_setpriv() {
        let dropped = Privilege::Dropped {
            uid: 1337,
            gid: 1337,
        };
        let argv = command_line(
            &plan(dropped, true),
            Some("palisade-ab12cd34"),
            "/bin/sc".as_ref(),
        );
        assert_eq!(
            strings(&argv),
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child=SIGKILL",
                "--",
                "ip",
                "netns",
                "exec",
                "palisade-ab12cd34",
                "setpriv",
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
                "/bin/sc",
                "run",
                "--x",
            ]
        );
    }

    #[test]
    fn init_runs_as_root_in_the_namespace_and_development_runs_bare() {
        let init = command_line(
            &plan(Privilege::NetworkAdmin, false),
            Some("ns1"),
            "/bin/sc".as_ref(),
        );
        assert_eq!(
            strings(&init),
            ["ip", "netns", "exec", "ns1", "/bin/sc", "run", "--x"]
        );
        let dev = command_line(&plan(Privilege::Unchanged, false), None, "/bin/sc".as_ref());
        assert_eq!(strings(&dev), ["/bin/sc", "run", "--x"]);
    }
}
