//! Starting a session's command: a PTY or three pipes, a new session, the workload's
//! environment.
//!
//! The command is started as `palisade-shim --palisade-internal-session-child MODE --
//! CMD…` (same trick as the workload: no safe pre-exec hook exists): that child clears
//! the blocked-signal mask, calls `setsid()` so the command gets its own session and
//! process group, makes the PTY slave (its stdin) its controlling terminal in `tty`
//! mode, and execs `CMD`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::pty::{Winsize, openpty};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use palisade_api::exec::ExecOpen;
use tokio::net::unix::pipe::{Receiver, Sender};
use tokio::sync::oneshot;

use super::fdio;
use crate::environment::Env;
use crate::supervise::{self, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, Waiters};

/// Hidden first argument of a session command's launcher.
pub const SESSION_CHILD_FLAG: &str = "--palisade-internal-session-child";
const MODE_TTY: &str = "tty";
const MODE_PIPES: &str = "pipes";
/// Our own binary, as the kernel knows it.
const SELF_EXE: &str = "/proc/self/exe";
/// `TERM` given to a PTY session whose environment has none.
const DEFAULT_TERM: &str = "xterm-256color";

/// The parent's ends of a session command's stdio.
#[derive(Debug)]
pub enum ChildIo {
    /// The PTY master, twice: stdin is written to it, stdout and stderr arrive merged.
    Pty { input: Sender, output: Receiver },
    Pipes {
        stdin: Sender,
        stdout: Receiver,
        stderr: Receiver,
    },
}

/// A running session command.
#[derive(Debug)]
pub struct Spawned {
    /// Also its process group and session id.
    pub pid: Pid,
    pub io: ChildIo,
    /// Its wait status, from the reaper.
    pub exited: oneshot::Receiver<WaitStatus>,
}

fn cloexec(fd: &OwnedFd) -> io::Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

fn launcher(open: &ExecOpen, env: &Env, mode: &str) -> Command {
    let mut cmd = Command::new(SELF_EXE);
    cmd.arg(SESSION_CHILD_FLAG)
        .arg(mode)
        .arg("--")
        .args(&open.argv)
        .env_clear()
        .envs(env);
    if open.tty && !env.contains_key(&OsString::from("TERM")) {
        cmd.env("TERM", DEFAULT_TERM);
    }
    cmd
}

/// Start `open.argv` for a session. Must run inside the session runtime.
pub fn spawn(open: &ExecOpen, env: &Env, waiters: &Waiters) -> io::Result<Spawned> {
    let (pid, io, exited) = if open.tty {
        waiters.spawn(|| {
            let size = (open.rows > 0 && open.cols > 0).then_some(Winsize {
                ws_row: open.rows,
                ws_col: open.cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            });
            let pty = openpty(size.as_ref(), None)?;
            // Under the spawn lock, so no other child can inherit them in between.
            cloexec(&pty.master)?;
            cloexec(&pty.slave)?;
            let child = launcher(open, env, MODE_TTY)
                .stdin(Stdio::from(pty.slave.try_clone()?))
                .stdout(Stdio::from(pty.slave.try_clone()?))
                .stderr(Stdio::from(pty.slave))
                .spawn()?;
            // Our copies of the slave are closed here (moved into the Command, dropped
            // with it), so the master reads EIO once the session's processes are gone.
            let pid = Pid::from_raw(child.id() as i32);
            let input = fdio::writer(pty.master.try_clone()?)?;
            Ok((
                pid,
                ChildIo::Pty {
                    input,
                    output: fdio::reader(pty.master)?,
                },
            ))
        })?
    } else {
        waiters.spawn(|| {
            let mut child = launcher(open, env, MODE_PIPES)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let pid = Pid::from_raw(child.id() as i32);
            let missing = || io::Error::other("the session command's pipes were not created");
            let stdin = OwnedFd::from(child.stdin.take().ok_or_else(missing)?);
            let stdout = OwnedFd::from(child.stdout.take().ok_or_else(missing)?);
            let stderr = OwnedFd::from(child.stderr.take().ok_or_else(missing)?);
            Ok((
                pid,
                ChildIo::Pipes {
                    stdin: fdio::writer(stdin)?,
                    stdout: fdio::reader(stdout)?,
                    stderr: fdio::reader(stderr)?,
                },
            ))
        })?
    };
    Ok(Spawned { pid, io, exited })
}

/// The launcher, running in the new child: `[MODE, "--", CMD, ARGS…]`. Returns only on
/// failure, with the exit code (126/127 like a shell).
pub fn session_child(args: &[OsString]) -> i32 {
    let (mode, command) = match args {
        [mode, dashdash, command @ ..] if dashdash == "--" && !command.is_empty() => {
            (mode.to_string_lossy(), command)
        }
        _ => {
            eprintln!("palisade-shim: error: {SESSION_CHILD_FLAG} needs MODE -- CMD…");
            return EXIT_NOT_FOUND;
        }
    };
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("palisade-shim: error: cannot start a new session for the command: {e}");
        return EXIT_NOT_EXECUTABLE;
    }
    if mode == MODE_TTY
        && let Err(e) = rustix::process::ioctl_tiocsctty(std::io::stdin())
    {
        eprintln!("palisade-shim: error: cannot make the PTY the controlling terminal: {e}");
        return EXIT_NOT_EXECUTABLE;
    }
    supervise::exec_child(command)
}
