//! Running programs inside namespaces, as chosen UIDs, with guards and timeouts.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Netns;

/// Hard limit for [`run_in`] commands, only to avoid hangs (not an assertion).
pub const RUN_TIMEOUT_SECS: u32 = 120;

/// The result of a finished command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Command line, for messages.
    pub cmdline: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
}

impl CmdOutput {
    /// Exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// True on exit code 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panic with the full command, status and output unless it succeeded; returns self.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed: {self}");
        self
    }

    /// `Ok(self)` on success, else an error describing the failure.
    pub fn ok_or_fail(self) -> anyhow::Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!("command failed: {self}")
        }
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` → {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn ns_command<I, S>(ns: &Netns, argv: I) -> (Command, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let cmdline = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()]).args(&argv);
    (cmd, format!("[{}] {cmdline}", ns.name()))
}

/// Run `argv` inside `ns` (as root unless wrapped with [`as_agent`]/[`as_uid`]) and wait.
///
/// Wrapped in `timeout --kill-after=5 120` so a wedged client cannot hang the suite. The
/// spawn itself failing (no `ip`/`timeout`) panics: that is a harness prerequisite.
pub fn run_in<I, S>(ns: &Netns, argv: I) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_in_with_input(ns, argv, None)
}

/// Like [`run_in`], feeding `input` on stdin.
pub fn run_in_with_input<I, S>(ns: &Netns, argv: I, input: Option<&[u8]>) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (inner, cmdline) = ns_command(ns, argv);
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", &RUN_TIMEOUT_SECS.to_string()])
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmdline}: {e} (need iproute2, coreutils)"));
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmdline}: {e}"));
    CmdOutput {
        cmdline,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A background process in a namespace, killed (its whole process group, SIGKILL) on drop.
/// stdout/stderr go to files in the namespace work dir; read them with [`Proc::stdout`].
#[derive(Debug)]
pub struct Proc {
    child: Child,
    cmdline: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// Spawn `argv` inside `ns` in its own process group; returns a kill-on-drop guard.
pub fn spawn_in<I, S>(ns: &Netns, argv: I) -> anyhow::Result<Proc>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (mut cmd, cmdline) = ns_command(ns, argv);
    let serial = crate::netns::next_serial();
    let stdout_path = ns.workdir().join(format!("proc-{serial}.out"));
    let stderr_path = ns.workdir().join(format!("proc-{serial}.err"));
    let stdout = File::create(&stdout_path).context("create stdout log")?;
    let stderr = File::create(&stderr_path).context("create stderr log")?;
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {cmdline} (need iproute2)"))?;
    Ok(Proc {
        child,
        cmdline,
        stdout_path,
        stderr_path,
    })
}

impl Proc {
    /// PID of the process (`ip netns exec` execs, so this is the program itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `Some(status)` once it exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the process group now (idempotent).
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Command line and captured output, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}`\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.stdout().trim_end(),
            self.stderr().trim_end()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `setpriv` prefix that drops to `uid`/`gid` with no supplementary groups, no
/// capabilities (inheritable, ambient, bounding set) and `no_new_privs`.
pub fn setpriv_prefix(uid: u32, gid: u32) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

/// Wrap `argv` to run as `uid`/`gid` with every capability dropped.
pub fn as_uid<S: AsRef<str>>(uid: u32, gid: u32, argv: &[S]) -> Vec<String> {
    let mut v = setpriv_prefix(uid, gid);
    v.extend(argv.iter().map(|a| a.as_ref().to_string()));
    v
}

/// Wrap `argv` to run as the agent (UID/GID 1000), all capabilities dropped, no_new_privs.
pub fn as_agent<S: AsRef<str>>(argv: &[S]) -> Vec<String> {
    as_uid(crate::AGENT_UID, crate::AGENT_UID, argv)
}

/// Wrap `argv` to run as the sidecar UID/GID 1337, all capabilities dropped.
pub fn as_sidecar<S: AsRef<str>>(argv: &[S]) -> Vec<String> {
    as_uid(crate::SIDECAR_UID, crate::SIDECAR_UID, argv)
}

/// Poll `check` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_listen(ns: &Netns, flags: &str, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let sport = format!(":{port}");
    let ok = wait_until(timeout, || {
        let out = run_in(ns, ["ss", flags, "sport", "=", &sport]);
        out.success() && !out.stdout.trim().is_empty()
    });
    if !ok {
        bail!(
            "nothing listening on port {port} ({flags}) in {} after {timeout:?}",
            ns.name()
        );
    }
    Ok(())
}

/// Wait until some socket listens on TCP `port` in `ns` (any address), or error after `timeout`.
pub fn wait_for_tcp_listen(ns: &Netns, port: u16, timeout: Duration) -> anyhow::Result<()> {
    wait_for_listen(ns, "-Hltn", port, timeout)
}

/// Wait until some UDP socket is bound to `port` in `ns`, or error after `timeout`.
pub fn wait_for_udp_listen(ns: &Netns, port: u16, timeout: Duration) -> anyhow::Result<()> {
    wait_for_listen(ns, "-Hlun", port, timeout)
}
