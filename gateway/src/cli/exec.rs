//! `palisade sandbox exec NAME [-i] [-t] -- CMD…`: run a command in a sandbox through
//! the gateway's exec relay.
//!
//! Owns: the `POST /v1/sandboxes/{id}/exec` upgrade, the local
//! side of the exec framed protocol (`palisade_api::exec`), the local terminal's raw
//! mode (restored on every exit path) and window-size changes. Must never: leave the
//! terminal in raw mode, or print the bearer token.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use http::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use palisade_api::ErrorBody;
use palisade_api::exec::{
    EXEC_UPGRADE_PROTOCOL, ExecExit, ExecOpen, Frame, WindowSize, read_frame, write_frame,
};
use palisade_gateway::client::Answer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::remote::Remote;

/// Exit code when the command's status never arrived (as ssh uses it).
pub const EXIT_NO_STATUS: u8 = 255;
/// Bytes of local stdin per `Stdin` frame.
const STDIN_CHUNK: usize = 32 * 1024;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox name (or id).
    pub name: String,
    /// Forward local stdin to the command (without it, the command's stdin is empty).
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command under a terminal; with a local terminal it is put in raw mode
    /// (keys such as ^C go to the command) and window-size changes follow.
    #[arg(short, long)]
    pub tty: bool,
    #[command(flatten)]
    pub remote: Remote,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Run the command; the process exits with its status (128+n for a signal).
pub fn run(args: ExecArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade sandbox exec: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = super::sandbox::resolve_id(&args.remote, &args.name)
        .and_then(|id| runtime.block_on(exec(&args, &id)));
    // The stdin reader thread may be blocked in read(); do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(exit) => ExitCode::from(status_byte(&exit)),
        Err(e) => {
            eprintln!("palisade sandbox exec: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The local exit status for a remote one: the code, 128+signal, 255 when unknown.
pub fn status_byte(exit: &ExecExit) -> u8 {
    match (exit.code, exit.signal) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(EXIT_NO_STATUS),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(EXIT_NO_STATUS),
        (None, None) => EXIT_NO_STATUS,
    }
}

async fn exec(args: &ExecArgs, id: &str) -> anyhow::Result<ExecExit> {
    let client = args.remote.client()?;
    let path = format!("/v1/sandboxes/{id}/exec");
    let upgraded = match client
        .upgrade(Method::POST, &path, EXEC_UPGRADE_PROTOCOL)
        .await?
    {
        Ok(io) => io,
        Err(answer) => bail!("{}", refusal(&args.name, &answer)),
    };
    let stdin_tty = std::io::stdin().is_terminal();
    if args.tty && args.interactive && !stdin_tty {
        eprintln!(
            "palisade sandbox exec: warning: stdin is not a terminal; the remote terminal gets \
             your input without raw mode"
        );
    }
    let size = if args.tty { local_size() } else { None };
    let open = ExecOpen {
        argv: args.command.clone(),
        tty: args.tty,
        rows: size.map_or(0, |s| s.rows),
        cols: size.map_or(0, |s| s.cols),
    };
    // Restored when dropped: on return, on error and on panic unwinding.
    let _raw = if args.tty && args.interactive && stdin_tty {
        Some(RawMode::enable().context("cannot put the terminal in raw mode")?)
    } else {
        None
    };
    let stdin = args.interactive.then(spawn_stdin_reader);
    let controls = Controls::install(args.tty)?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    session(
        TokioIo::new(upgraded),
        open,
        stdin,
        controls,
        &mut stdout,
        &mut stderr,
    )
    .await
}

/// An operator-facing message for a refused exec request.
pub fn refusal(name: &str, answer: &Answer) -> String {
    let reason = serde_json::from_slice::<ErrorBody>(&answer.body)
        .map(|e| format!("{}: {}", e.error, e.reason))
        .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).trim().to_owned());
    let hint = match answer.status {
        StatusCode::UNAUTHORIZED => {
            "the gateway did not accept your token; check --token-file / PALISADE_TOKEN_FILE"
                .to_owned()
        }
        StatusCode::FORBIDDEN => format!(
            "permission denied: exec needs the sandbox:write scope on sandbox `{name}`; ask an \
             admin for a token with it"
        ),
        StatusCode::NOT_FOUND => format!(
            "sandbox `{name}` was not found (deleted, or not visible to your token); \
             `palisade sandbox list` shows what is"
        ),
        StatusCode::TOO_MANY_REQUESTS => format!(
            "sandbox `{name}` already has the most exec sessions allowed; close one and retry"
        ),
        StatusCode::CONFLICT => format!(
            "sandbox `{name}` is not connected to the gateway; check that it is running and \
             that its sidecar reaches the gateway (`palisade sandbox logs {name}`)"
        ),
        StatusCode::GATEWAY_TIMEOUT => format!(
            "sandbox `{name}`'s sidecar did not dial back in time; check its log and its \
             route to the gateway"
        ),
        status => format!("the gateway answered {status}"),
    };
    if reason.is_empty() {
        hint
    } else {
        format!("{hint} (gateway: {reason})")
    }
}

fn local_size() -> Option<WindowSize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout().as_fd())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin().as_fd()))
        .ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some(WindowSize {
        rows: size.ws_row,
        cols: size.ws_col,
    })
}

/// The local terminal in raw mode until dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enable() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

impl std::fmt::Debug for RawMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawMode")
    }
}

/// Local stdin, read on a plain thread (a blocking read cannot be cancelled); `None`
/// marks end of input.
fn spawn_stdin_reader() -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Local events turned into frames: window-size changes (with a terminal) and
/// SIGINT/SIGTERM/SIGHUP/SIGQUIT (forwarded to the command).
pub struct Controls {
    winch: Option<tokio::signal::unix::Signal>,
    signals: Vec<(u8, tokio::signal::unix::Signal)>,
}

impl std::fmt::Debug for Controls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controls").finish_non_exhaustive()
    }
}

impl Controls {
    fn install(tty: bool) -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let winch = if tty {
            Some(signal(SignalKind::window_change()).context("cannot watch SIGWINCH")?)
        } else {
            None
        };
        let mut signals = Vec::new();
        for (signo, kind) in [
            (2u8, SignalKind::interrupt()),
            (15, SignalKind::terminate()),
            (1, SignalKind::hangup()),
            (3, SignalKind::quit()),
        ] {
            signals.push((signo, signal(kind).context("cannot watch signals")?));
        }
        Ok(Self { winch, signals })
    }

    /// No local events.
    #[cfg(test)]
    pub fn none() -> Self {
        Self {
            winch: None,
            signals: Vec::new(),
        }
    }

    /// The next frame to send for a local event.
    async fn next(&mut self) -> Frame {
        let winch = async {
            match self.winch.as_mut() {
                Some(w) => {
                    w.recv().await;
                    match local_size() {
                        Some(size) => Frame::Resize(size),
                        None => std::future::pending().await,
                    }
                }
                None => std::future::pending().await,
            }
        };
        let signals = async {
            if self.signals.is_empty() {
                return std::future::pending().await;
            }
            let futures = self.signals.iter_mut().map(|(signo, s)| {
                let signo = *signo;
                Box::pin(async move {
                    s.recv().await;
                    signo
                })
            });
            Frame::Signal(first_of(futures).await)
        };
        tokio::select! {
            f = winch => f,
            f = signals => f,
        }
    }
}

/// Wait for the first of several futures (a tiny `select_all`).
async fn first_of<F: std::future::Future + Unpin>(
    futures: impl IntoIterator<Item = F>,
) -> F::Output {
    let mut futures: Vec<F> = futures.into_iter().collect();
    std::future::poll_fn(move |cx| {
        for f in &mut futures {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Speak the exec protocol over `io`: send `open`, forward `stdin` (or an immediate
/// EOF without it) and `controls`, copy output to `out`/`err`, and return the
/// command's exit.
pub async fn session<IO, O, E>(
    io: IO,
    open: ExecOpen,
    stdin: Option<mpsc::Receiver<Option<Vec<u8>>>>,
    mut controls: Controls,
    out: &mut O,
    err: &mut E,
) -> anyhow::Result<ExecExit>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    O: Write + ?Sized,
    E: Write + ?Sized,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    write_frame(&mut wr, &Frame::Open(open))
        .await
        .context("cannot send the command to the sandbox")?;
    // Everything sent after `Open` comes from this task, so reading (which is not
    // cancellation-safe) never has to share a select with writing.
    let sender = tokio::spawn(async move {
        let mut stdin = stdin;
        if stdin.is_none() {
            write_frame(&mut wr, &Frame::StdinEof).await?;
        }
        loop {
            let frame = tokio::select! {
                chunk = recv_opt(stdin.as_mut()) => match chunk {
                    Some(Some(bytes)) => Frame::Stdin(bytes),
                    // End of local input (or the reader is gone).
                    Some(None) | None => {
                        stdin = None;
                        Frame::StdinEof
                    }
                },
                frame = controls.next() => frame,
            };
            write_frame(&mut wr, &frame).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let result = loop {
        match read_frame(&mut rd).await {
            Ok(Some(Frame::Stdout(bytes))) => {
                out.write_all(&bytes)?;
                out.flush()?;
            }
            Ok(Some(Frame::Stderr(bytes))) => {
                err.write_all(&bytes)?;
                err.flush()?;
            }
            Ok(Some(Frame::Exit(exit))) => break Ok(exit),
            Ok(Some(Frame::Error(e))) => {
                break Err(anyhow::anyhow!("the sandbox refused: {}", e.message));
            }
            Ok(Some(other)) => {
                break Err(anyhow::anyhow!(
                    "the sandbox sent an unexpected {} frame; is the gateway's relay compatible?",
                    other.name()
                ));
            }
            Ok(None) => {
                break Err(anyhow::anyhow!(
                    "the connection closed before the command's exit status arrived (session \
                     limit or idle timeout of the gateway, or the sandbox stopped)"
                ));
            }
            Err(e) => break Err(anyhow::Error::new(e).context("the exec stream broke")),
        }
    };
    sender.abort();
    result
}

/// Receive from an optional channel; `None` when there is none or it closed.
async fn recv_opt(rx: Option<&mut mpsc::Receiver<Option<Vec<u8>>>>) -> Option<Option<Vec<u8>>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn refusals_say_what_to_do() {
        let answer = |status: StatusCode, body: &str| Answer {
            status,
            headers: http::HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        };
        let forbidden = refusal(
            "box",
            &answer(
                StatusCode::FORBIDDEN,
                r#"{"error":"forbidden","reason":"missing scope sandbox:write"}"#,
            ),
        );
        assert!(forbidden.contains("sandbox:write"), "{forbidden}");
        assert!(forbidden.contains("gateway: forbidden"), "{forbidden}");
        for (status, word) in [
            (StatusCode::NOT_FOUND, "not found"),
            (StatusCode::TOO_MANY_REQUESTS, "most exec sessions"),
            (StatusCode::CONFLICT, "not connected"),
            (StatusCode::UNAUTHORIZED, "token"),
        ] {
            let text = refusal("box", &answer(status, ""));
            assert!(text.contains(word), "{status}: {text}");
        }
    }

    #[test]
    fn exit_status_bytes() {
        let code = |c| ExecExit {
            code: Some(c),
            signal: None,
        };
        assert_eq!(status_byte(&code(0)), 0);
        assert_eq!(status_byte(&code(42)), 42);
        assert_eq!(
            status_byte(&ExecExit {
                code: None,
                signal: Some(9)
            }),
            137
        );
        assert_eq!(
            status_byte(&ExecExit {
                code: None,
                signal: None
            }),
            255
        );
    }

    /// The CLI side against a scripted server side over an in-memory stream.
    #[tokio::test]
    async fn session_forwards_stdin_and_output_and_returns_the_exit() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let fake_shim = tokio::spawn(async move {
            let open = read_frame(&mut server).await.unwrap().unwrap();
            let Frame::Open(open) = open else {
                panic!("first frame {open:?}")
            };
            assert_eq!(open.argv, vec!["cat".to_owned()]);
            let mut echoed = Vec::new();
            loop {
                match read_frame(&mut server).await.unwrap().unwrap() {
                    Frame::Stdin(bytes) => {
                        echoed.extend_from_slice(&bytes);
                        write_frame(&mut server, &Frame::Stdout(bytes))
                            .await
                            .unwrap();
                    }
                    Frame::StdinEof => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            write_frame(&mut server, &Frame::Stderr(b"bye\n".to_vec()))
                .await
                .unwrap();
            write_frame(
                &mut server,
                &Frame::Exit(ExecExit {
                    code: Some(4),
                    signal: None,
                }),
            )
            .await
            .unwrap();
            echoed
        });
        let (tx, rx) = mpsc::channel(4);
        tx.send(Some(b"hello ".to_vec())).await.unwrap();
        tx.send(Some(b"world".to_vec())).await.unwrap();
        tx.send(None).await.unwrap();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let open = ExecOpen {
            argv: vec!["cat".into()],
            tty: false,
            rows: 0,
            cols: 0,
        };
        let exit = session(client, open, Some(rx), Controls::none(), &mut out, &mut err)
            .await
            .unwrap();
        assert_eq!(exit.code, Some(4));
        assert_eq!(out, b"hello world");
        assert_eq!(err, b"bye\n");
        assert_eq!(fake_shim.await.unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn session_reports_a_refusal_and_a_cut_stream() {
        let (client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let _ = read_frame(&mut server).await;
            write_frame(&mut server, &Frame::error("permission denied"))
                .await
                .unwrap();
        });
        let open = ExecOpen {
            argv: vec!["id".into()],
            tty: false,
            rows: 0,
            cols: 0,
        };
        let err = session(
            client,
            open.clone(),
            None,
            Controls::none(),
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{err}");

        let (client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let _ = read_frame(&mut server).await;
            drop(server);
        });
        let err = session(
            client,
            open,
            None,
            Controls::none(),
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("before the command's exit"),
            "{err}"
        );
    }
}
