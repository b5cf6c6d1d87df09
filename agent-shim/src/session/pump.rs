//! One session: read `Open`, start the command, move bytes both ways, end with `Exit`.
//!
//! Input (client → command) runs in its own task so a command that does not read its
//! stdin never stops its output from flowing. The client closing its sending side is a
//! hang-up: the command's process group gets SIGHUP, and SIGKILL [`KILL_GRACE`] later
//! if it is still running. After the command exits, output still buffered in the pipes
//! or the PTY is forwarded until end of stream, for at most [`DRAIN_GRACE`] (a
//! background process may hold the stream open forever).

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use palisade_api::exec::{ExecExit, Frame, WindowSize, read_frame, write_frame};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::pipe::{Receiver, Sender};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::child::{self, ChildIo};
use super::fdio;
use crate::environment::Env;
use crate::log::{info, warning};
use crate::supervise::Waiters;

/// How long a new connection may take to send its `Open` frame.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// After the command exited, how long remaining output may take to reach end of stream.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// After a hang-up (client gone), how long the command has to exit before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// Largest `Stdout`/`Stderr` payload the shim sends.
pub const OUTPUT_CHUNK: usize = 32 * 1024;
/// Sent to a PTY for `StdinEof` (the VEOF character, ^D).
const PTY_EOF: u8 = 0x04;

/// Serve one accepted, authorised connection.
pub async fn run(stream: UnixStream, id: u64, env: &Env, waiters: &Waiters) {
    let (mut rd, mut wr) = stream.into_split();
    let open = match tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut rd)).await {
        Ok(Ok(Some(Frame::Open(open)))) => open,
        Ok(Ok(None)) => return,
        Ok(Ok(Some(other))) => {
            let message = format!("the first frame must be open, got {}", other.name());
            return refuse(&mut wr, id, message).await;
        }
        Ok(Err(e)) => return refuse(&mut wr, id, format!("bad open frame: {e}")).await,
        Err(_) => {
            let message = format!("no open frame within {} s", OPEN_TIMEOUT.as_secs());
            return refuse(&mut wr, id, message).await;
        }
    };
    let Some(program) = open.argv.first().filter(|p| !p.is_empty()).cloned() else {
        let message = "open.argv is empty; name the command to run".to_owned();
        return refuse(&mut wr, id, message).await;
    };
    let spawned = match child::spawn(&open, env, waiters) {
        Ok(spawned) => spawned,
        Err(e) => {
            let message = format!("cannot start {program}: {e}");
            return refuse(&mut wr, id, message).await;
        }
    };
    let pid = spawned.pid;
    info!(
        "session {id}: started {program} as pid {pid} ({})",
        if open.tty { "pty" } else { "pipes" }
    );
    let (stdout, stderr, sink) = match spawned.io {
        ChildIo::Pty { input, output } => (Some(output), None, Sink::Pty(input)),
        ChildIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => (Some(stdout), Some(stderr), Sink::Pipe(Some(stdin))),
    };
    let mut input = tokio::spawn(input(rd, sink, pid, id));
    let status = pump(&mut wr, stdout, stderr, spawned.exited, &mut input, pid, id).await;
    input.abort();
    let (frame, outcome) = match status.and_then(exit_of) {
        Some(exit) => (Frame::Exit(exit), describe(&exit)),
        None => (
            Frame::error("the command's exit status is unavailable"),
            "an unknown status".to_owned(),
        ),
    };
    let _ = write_frame(&mut wr, &frame).await;
    let _ = wr.shutdown().await;
    info!("session {id}: {program} (pid {pid}) ended with {outcome}");
}

async fn refuse(wr: &mut OwnedWriteHalf, id: u64, message: String) {
    warning!("session {id}: refused: {message}");
    let _ = write_frame(wr, &Frame::error(message)).await;
    let _ = wr.shutdown().await;
}

fn exit_of(status: WaitStatus) -> Option<ExecExit> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExecExit {
            code: Some(code),
            signal: None,
        }),
        WaitStatus::Signaled(_, sig, _) => Some(ExecExit {
            code: None,
            signal: Some(sig as i32),
        }),
        _ => None,
    }
}

fn describe(exit: &ExecExit) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "an unknown status".to_owned(),
    }
}

/// Where client input goes.
enum Sink {
    Pty(Sender),
    /// `None` once closed (`StdinEof`, or the command closed its stdin).
    Pipe(Option<Sender>),
}

impl Sink {
    async fn write(&mut self, bytes: &[u8]) {
        match self {
            Sink::Pty(master) => {
                let _ = fdio::write_all(master, bytes).await;
            }
            Sink::Pipe(stdin) => {
                if let Some(fd) = stdin.as_mut()
                    && fdio::write_all(fd, bytes).await.is_err()
                {
                    // EPIPE: the command closed its stdin; drop further input.
                    *stdin = None;
                }
            }
        }
    }

    async fn eof(&mut self) {
        match self {
            Sink::Pty(master) => {
                let _ = fdio::write_all(master, &[PTY_EOF]).await;
            }
            Sink::Pipe(stdin) => *stdin = None,
        }
    }

    fn resize(&self, size: WindowSize, id: u64) {
        if let Sink::Pty(master) = self {
            let winsize = rustix::termios::Winsize {
                ws_row: size.rows,
                ws_col: size.cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // The kernel sends SIGWINCH to the terminal's foreground process group.
            if let Err(e) = rustix::termios::tcsetwinsize(master, winsize) {
                warning!("session {id}: cannot resize the terminal: {e}");
            }
        }
    }
}

/// Client → command: stdin, EOF, resizes, signals. Returns when the client stops sending.
async fn input(mut rd: OwnedReadHalf, mut sink: Sink, pgid: Pid, id: u64) {
    loop {
        let frame = match read_frame(&mut rd).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                warning!("session {id}: reading from the client failed: {e}");
                return;
            }
        };
        match frame {
            Frame::Stdin(bytes) => sink.write(&bytes).await,
            Frame::StdinEof => sink.eof().await,
            Frame::Resize(size) => sink.resize(size, id),
            Frame::Signal(signo) => match Signal::try_from(i32::from(signo)) {
                Ok(sig) => signal_group(pgid, sig, id),
                Err(_) => warning!("session {id}: ignoring unknown signal number {signo}"),
            },
            other => warning!(
                "session {id}: ignoring an unexpected {} frame from the client",
                other.name()
            ),
        }
    }
}

fn signal_group(pgid: Pid, sig: Signal, id: u64) {
    match killpg(pgid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => warning!("session {id}: cannot send {sig} to the command: {e}"),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Command → client until the command exited and its output ended (or the drain grace
/// passed, or the client is gone). Returns the command's wait status.
async fn pump(
    wr: &mut OwnedWriteHalf,
    mut stdout: Option<Receiver>,
    mut stderr: Option<Receiver>,
    mut exited: tokio::sync::oneshot::Receiver<WaitStatus>,
    input: &mut JoinHandle<()>,
    pgid: Pid,
    id: u64,
) -> Option<WaitStatus> {
    let mut out_buf = vec![0u8; OUTPUT_CHUNK];
    let mut err_buf = vec![0u8; OUTPUT_CHUNK];
    // Some(None): the reaper dropped the waiter without a status.
    let mut status: Option<Option<WaitStatus>> = None;
    let mut client_open = true;
    let mut input_done = false;
    let mut drain_until: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        if status.is_some() && (!client_open || (stdout.is_none() && stderr.is_none())) {
            break;
        }
        let mut hang_up = false;
        tokio::select! {
            r = fdio::read(stdout.as_mut(), &mut out_buf) => match r {
                Ok(n) if n > 0 => {
                    if client_open && write_frame(wr, &Frame::Stdout(out_buf[..n].to_vec())).await.is_err() {
                        hang_up = true;
                    }
                }
                _ => stdout = None,
            },
            r = fdio::read(stderr.as_mut(), &mut err_buf) => match r {
                Ok(n) if n > 0 => {
                    if client_open && write_frame(wr, &Frame::Stderr(err_buf[..n].to_vec())).await.is_err() {
                        hang_up = true;
                    }
                }
                _ => stderr = None,
            },
            s = &mut exited, if status.is_none() => {
                status = Some(s.ok());
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            _ = &mut *input, if !input_done => {
                input_done = true;
                hang_up = true;
            }
            () = sleep_until_opt(drain_until) => break,
            () = sleep_until_opt(kill_at), if status.is_none() => {
                signal_group(pgid, Signal::SIGKILL, id);
                kill_at = None;
            }
        }
        if hang_up && client_open {
            client_open = false;
            if status.is_none() {
                signal_group(pgid, Signal::SIGHUP, id);
                kill_at = Some(Instant::now() + KILL_GRACE);
            }
        }
    }
    status.flatten()
}
