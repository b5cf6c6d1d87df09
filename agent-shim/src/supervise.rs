//! PID 1 duties: run the workload, forward signals, reap zombies, report its status.
//!
//! Owns: spawning the agent command in its own process group with a prepared
//! environment, forwarding termination/job-control signals to that group, reaping every
//! child that gets reparented to the shim (it is PID 1 in the container, and a child
//! subreaper otherwise), and turning the workload's end into an exit code (`n`, or
//! `128+signal`). Must never: exit before the workload did, or leave a zombie it was
//! told about. Signals are taken synchronously through a `signalfd`, so no signal
//! handler (and no unsafe code) is needed.
//!
//! The reaper owns every `waitpid`: other children of the shim (session commands) are
//! spawned through [`Waiters::spawn`], which registers their pid before the reaper can
//! collect them, and the reaper hands their status to the registered waiter instead of
//! swallowing it.

use std::collections::HashMap;

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::environment::Env;
use crate::log::warning;

/// Signals passed on to the workload's process group.
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Exit code when the command exists but cannot be executed (as shells use it).
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Signals that end the shim while it is still waiting for the sidecar.
pub const TERMINATING: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Exit code when the shim itself cannot start the workload.
pub const EXIT_SHIM_ERROR: i32 = 125;
/// Exit code when the command is not found (as shells use it).
pub const EXIT_NOT_FOUND: i32 = 127;

/// Hidden first argument: "clear the signal mask, then exec the rest".
pub const EXEC_CHILD_FLAG: &str = "--palisade-internal-exec-child";
/// Our own binary, as the kernel knows it (robust against PATH and cwd).
const SELF_EXE: &str = "/proc/self/exe";

/// Second half of spawning the workload, running in the child: unblock every signal
/// (the supervisor blocked them for its signalfd) and exec `command`. Returns only on
/// failure, with the exit code to use (127 not found, 126 otherwise).
pub fn exec_child(command: &[OsString]) -> i32 {
    let Some((program, args)) = command.split_first() else {
        eprintln!("palisade-shim: error: {EXEC_CHILD_FLAG} needs a command");
        return EXIT_NOT_FOUND;
    };
    if let Err(e) = SigSet::empty().thread_set_mask() {
        eprintln!("palisade-shim: error: cannot reset the signal mask of the workload: {e}");
        return EXIT_NOT_EXECUTABLE;
    }
    let err = Command::new(program).args(args).exec();
    let e = spawn_error(program, &err);
    eprintln!("palisade-shim: error: {}", e.message);
    e.code
}

pub(crate) fn spawn_error(program: &OsString, e: &std::io::Error) -> SpawnError {
    let shown = program.to_string_lossy();
    match e.kind() {
        ErrorKind::NotFound => SpawnError {
            code: EXIT_NOT_FOUND,
            message: format!("cannot run {shown}: command not found (check the image and PATH)"),
        },
        ErrorKind::PermissionDenied => SpawnError {
            code: EXIT_NOT_EXECUTABLE,
            message: format!(
                "cannot run {shown}: permission denied (is it executable by this UID?)"
            ),
        },
        _ => SpawnError {
            code: EXIT_NOT_EXECUTABLE,
            message: format!("cannot run {shown}: {e}"),
        },
    }
}

/// The workload could not be started.
#[derive(Debug)]
pub struct SpawnError {
    /// Exit code to use (125).
    pub code: i32,
    /// Operator-facing message.
    pub message: String,
}

/// Exit code for a wait status of the workload: its code, or 128+signal.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Children other than the workload whose exit status someone waits for, by pid.
/// Cloning shares the registry.
#[derive(Debug, Clone, Default)]
pub struct Waiters {
    inner: Arc<Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>>>,
}

impl Waiters {
    /// Run `start` (which spawns one child and returns its pid) with the registry
    /// locked, and register the pid before unlocking: the reaper, which takes the same
    /// lock to deliver a status, cannot collect the child before its waiter exists.
    /// File descriptors that must not leak into other children can be created inside
    /// `start` as well, since every spawn of the shim goes through this lock.
    pub fn spawn<T>(
        &self,
        start: impl FnOnce() -> std::io::Result<(Pid, T)>,
    ) -> std::io::Result<(Pid, T, oneshot::Receiver<WaitStatus>)> {
        let mut registry = self.inner.lock();
        let (pid, value) = start()?;
        let (tx, rx) = oneshot::channel();
        registry.insert(pid.as_raw(), tx);
        Ok((pid, value, rx))
    }

    /// Run `f` holding the spawn lock without registering anything (the workload).
    fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        let _registry = self.inner.lock();
        f()
    }

    /// Hand a reaped child's status to its waiter, if it has one.
    fn deliver(&self, status: WaitStatus) {
        let Some(pid) = status.pid() else {
            return;
        };
        if let Some(tx) = self.inner.lock().remove(&pid.as_raw()) {
            // The waiter may be gone (session ended early); nothing to do then.
            let _ = tx.send(status);
        }
    }
}

/// Prepared signal plumbing; create it *before* anything that might receive a signal.
#[derive(Debug)]
pub struct Supervisor {
    signals: SignalFd,
}

impl Supervisor {
    /// Become a child subreaper and route the forwarded signals and SIGCHLD to a signalfd.
    pub fn new() -> Result<Self> {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warning!(
                "cannot become a child subreaper ({e}); orphans of the workload will not be reaped by the shim unless it is PID 1"
            );
        }
        let mut mask = SigSet::empty();
        for sig in FORWARDED {
            mask.add(sig);
        }
        mask.add(Signal::SIGCHLD);
        // Blocked here, read from the signalfd; the child gets an empty mask from std's spawn.
        mask.thread_block().context("cannot block signals")?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
            .context("cannot create a signalfd")?;
        Ok(Self { signals })
    }

    /// A termination signal (TERM, INT, HUP, QUIT) received before the workload started,
    /// consumed without blocking; used to abort the ready wait when the pod is deleted.
    pub fn pending_termination(&self) -> Option<Signal> {
        let mut mask = SigSet::empty();
        for sig in TERMINATING {
            mask.add(sig);
        }
        let fd =
            SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok()?;
        match fd.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }

    /// Spawn `command` and supervise it until it exits; returns its exit code. Other
    /// children's statuses go to their `waiters`.
    pub fn run(
        self,
        command: &[OsString],
        env: &Env,
        waiters: &Waiters,
    ) -> Result<i32, SpawnError> {
        let (program, args) = command.split_first().ok_or_else(|| SpawnError {
            code: EXIT_NOT_FOUND,
            message: "no command given; usage: palisade-shim [flags] -- CMD ARGS…".into(),
        })?;
        // The workload is started through `palisade-shim <EXEC_CHILD_FLAG> CMD…`, which
        // clears the blocked-signal mask inherited from us and then execs CMD (same pid,
        // same process group); std's spawn keeps the mask, and no safe pre-exec hook exists.
        let child = waiters
            .exclusive(|| {
                Command::new(SELF_EXE)
                    .arg(EXEC_CHILD_FLAG)
                    .arg(program)
                    .args(args)
                    .env_clear()
                    .envs(env)
                    .process_group(0)
                    .spawn()
            })
            .map_err(|e| SpawnError {
                code: EXIT_SHIM_ERROR,
                message: format!("cannot start the workload through {SELF_EXE}: {e}"),
            })?;
        let pid = Pid::from_raw(child.id() as i32);
        // `child` is never waited on through std: the reaping loop below collects it.
        drop(child);
        Ok(self.supervise(pid, waiters))
    }

    fn supervise(self, pid: Pid, waiters: &Waiters) -> i32 {
        loop {
            let info = match self.signals.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warning!(
                        "reading signals failed ({e}); falling back to waiting for the workload only"
                    );
                    return wait_blocking(pid);
                }
            };
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if sig == Signal::SIGCHLD {
                if let Some(code) = reap(pid, waiters) {
                    // Collect whatever else already exited, then report.
                    let _ = reap(pid, waiters);
                    return code;
                }
                continue;
            }
            match killpg(pid, sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => warning!("cannot forward {sig} to the workload: {e}"),
            }
        }
    }
}

/// Reap every exited child; returns the workload's exit code if it was among them.
/// Statuses of registered children go to their waiters.
fn reap(workload: Pid, waiters: &Waiters) -> Option<i32> {
    let mut result = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return result,
            Ok(status) => {
                if status.pid() == Some(workload) {
                    if let Some(code) = exit_code(status) {
                        result = Some(code);
                    }
                } else {
                    waiters.deliver(status);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                warning!("waitpid failed: {e}");
                return result;
            }
        }
    }
}

fn wait_blocking(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return code;
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                warning!("waitpid for the workload failed: {e}");
                return EXIT_SHIM_ERROR;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_get_their_child_status_and_others_are_ignored() {
        let waiters = Waiters::default();
        let (pid, value, mut rx) = waiters
            .spawn(|| Ok((Pid::from_raw(4242), "started")))
            .unwrap();
        assert_eq!((pid.as_raw(), value), (4242, "started"));
        // A status for an unregistered pid (an orphan) goes nowhere.
        waiters.deliver(WaitStatus::Exited(Pid::from_raw(7), 0));
        assert!(rx.try_recv().is_err());
        waiters.deliver(WaitStatus::Exited(pid, 5));
        assert_eq!(rx.try_recv().unwrap(), WaitStatus::Exited(pid, 5));
        // Delivered once: the registration is gone.
        assert!(waiters.inner.lock().is_empty());
        // A failed spawn registers nothing.
        let failed = waiters.spawn::<()>(|| Err(std::io::Error::other("no")));
        assert!(failed.is_err());
        assert!(waiters.inner.lock().is_empty());
    }

    #[test]
    fn codes() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(p, 7)), Some(7));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGTERM, false)),
            Some(143)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, true)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
