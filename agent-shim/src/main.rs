//! `palisade-shim`: the agent container's entrypoint.
//!
//! Start-up, in order: refuse to run unless the container is hardened
//! ([`hardening`]), give an arbitrary UID a usable identity ([`identity`]), wait for the
//! sidecar ([`ready`]), build the agent's environment ([`environment`]), then run the
//! workload as PID 1 ([`supervise`]) and tell the sidecar how it ended ([`exit_file`]).
//! Meanwhile it serves `palisade sandbox exec` sessions to the sidecar ([`session`]).
//! Flags, exit codes and environment are documented in `docs/shim.md`.
#![forbid(unsafe_code)]

mod log;

mod environment;
mod exit_file;
mod hardening;
mod identity;
mod ready;
mod session;
mod supervise;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::log::{info, warning};

/// Shared state dir (a memory emptyDir shared with the sidecar).
pub const DEFAULT_SHARED_DIR: &str = palisade_api::defaults::STATE_DIR;
/// Written by the sidecar once it can carry traffic.
pub const DEFAULT_READY_FILE: &str = palisade_api::defaults::READY_FILE;
/// The sandbox CA bundle published by the sidecar.
pub const DEFAULT_CA_BUNDLE: &str = palisade_api::defaults::CA_BUNDLE;
/// Written by the shim with the workload's exit status.
pub const DEFAULT_EXIT_FILE: &str = palisade_api::defaults::EXIT_FILE;
/// How long to wait for the sidecar by default.
pub const DEFAULT_READY_TIMEOUT: &str = "120s";

/// Exit code: the hardening check refused the start.
pub const EXIT_NOT_HARDENED: i32 = 121;
/// Exit code: the sidecar's ready file did not appear in time.
pub const EXIT_SIDECAR_NOT_READY: i32 = 122;
/// Exit code: HOME / passwd entry could not be set up.
pub const EXIT_IDENTITY: i32 = 123;
/// Exit code: any other failure of the shim itself.
pub const EXIT_SHIM_ERROR: i32 = supervise::EXIT_SHIM_ERROR;

/// Palisade agent-shim: verifies hardening, waits for the sidecar, runs the agent as PID 1.
#[derive(Debug, Parser)]
#[command(name = "palisade-shim", version, about)]
struct Cli {
    /// Start even when the hardening check fails (prints warnings instead). Debugging only.
    #[arg(long, env = "PALISADE_ALLOW_INSECURE")]
    allow_insecure: bool,
    /// Accept GID 0 / supplementary group 0 (OpenShift's default for arbitrary UIDs).
    #[arg(long, env = "PALISADE_ALLOW_ROOT_GROUP")]
    allow_root_group: bool,
    /// HOME for the agent (default: $HOME if writable, else /tmp/palisade-home-<uid>).
    #[arg(long, env = "PALISADE_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// User name given to a UID without passwd entry (`<name>-<uid>` if taken).
    #[arg(long, env = "PALISADE_USER_NAME", default_value = "agent")]
    user_name: String,
    /// Path of libnss_wrapper.so (default: searched in the usual library dirs).
    #[arg(long, env = "PALISADE_NSS_WRAPPER", value_name = "LIB")]
    nss_wrapper: Option<PathBuf>,
    /// File whose existence means the sidecar is ready.
    #[arg(long, env = "PALISADE_READY_FILE", default_value = DEFAULT_READY_FILE)]
    ready_file: PathBuf,
    /// How long to wait for the ready file (`500ms`, `30s`, `2m`).
    #[arg(long, env = "PALISADE_READY_TIMEOUT", default_value = DEFAULT_READY_TIMEOUT, value_parser = ready::parse_duration)]
    ready_timeout: Duration,
    /// Do not wait for the sidecar (local use without one).
    #[arg(long, env = "PALISADE_NO_WAIT")]
    no_wait: bool,
    /// CA bundle to export as SSL_CERT_FILE & co. when it exists.
    #[arg(long, env = "PALISADE_CA_BUNDLE", default_value = DEFAULT_CA_BUNDLE)]
    ca_bundle: PathBuf,
    /// Extra name glob of variables to remove from the agent's environment (repeatable).
    #[arg(
        long = "scrub-env",
        env = "PALISADE_SCRUB_ENV",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    scrub_env: Vec<String>,
    /// Variable to keep even if a scrub glob matches it (repeatable).
    #[arg(
        long = "keep-env",
        env = "PALISADE_KEEP_ENV",
        value_name = "NAME",
        value_delimiter = ','
    )]
    keep_env: Vec<String>,
    /// Where to write the workload's exit status for the sidecar.
    #[arg(long, env = "PALISADE_EXIT_FILE", default_value = DEFAULT_EXIT_FILE)]
    exit_file: PathBuf,
    /// Unix socket the sidecar opens exec sessions on (created mode 0666; only
    /// --sidecar-uid may use it).
    #[arg(long, env = "PALISADE_SESSION_SOCKET", default_value = session::DEFAULT_SESSION_SOCKET)]
    session_socket: PathBuf,
    /// UID of the sidecar: the only peer accepted on the session socket.
    #[arg(long, env = "PALISADE_SIDECAR_UID", default_value_t = session::DEFAULT_SIDECAR_UID)]
    sidecar_uid: u32,
    /// Most sessions running at once (1-1024); more are refused.
    #[arg(
        long,
        env = "PALISADE_MAX_SESSIONS",
        default_value_t = session::DEFAULT_MAX_SESSIONS,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    max_sessions: u32,
    /// Do not serve sessions (`palisade sandbox exec` will not reach this sandbox).
    #[arg(long, env = "PALISADE_NO_SESSIONS")]
    no_sessions: bool,
    /// Only print warnings and errors.
    #[arg(long, short, env = "PALISADE_QUIET")]
    quiet: bool,
    /// The agent command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// A start-up failure: message for the operator and the exit code.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn main() {
    let mut args = std::env::args_os();
    match args.nth(1) {
        Some(a) if a == supervise::EXEC_CHILD_FLAG => {
            let command: Vec<OsString> = args.collect();
            std::process::exit(supervise::exec_child(&command));
        }
        Some(a) if a == session::SESSION_CHILD_FLAG => {
            let rest: Vec<OsString> = args.collect();
            std::process::exit(session::session_child(&rest));
        }
        _ => {}
    }
    // The shim's own environment still holds the variables scrubbed from the agent's;
    // non-dumpable makes /proc/<shim>/environ unreadable to the agent (same UID).
    let dumpable_off = nix::sys::prctl::set_dumpable(false);
    let cli = Cli::parse();
    log::set_quiet(cli.quiet);
    if let Err(e) = dumpable_off {
        warning!(
            "cannot make the shim non-dumpable ({e}); the agent may read the shim's environment from /proc"
        );
    }
    let code = match run(&cli) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("palisade-shim: error: {}", failure.message);
            failure.code
        }
    };
    exit_file::write(&cli.exit_file, code);
    std::process::exit(code);
}

fn run(cli: &Cli) -> Result<i32, Failure> {
    // 1. Hardening.
    let report = hardening::check(cli.allow_root_group).map_err(|e| {
        fail(
            EXIT_SHIM_ERROR,
            format!("cannot check the hardening: {e:#}"),
        )
    })?;
    if report.set_no_new_privs {
        info!(
            "NoNewPrivs was not set; the shim set it itself (declare securityContext.allowPrivilegeEscalation: false)"
        );
    }
    if !report.findings.is_empty() {
        if !cli.allow_insecure {
            return Err(fail(
                EXIT_NOT_HARDENED,
                hardening::refusal_message(&report.findings),
            ));
        }
        warning!(
            "--allow-insecure: starting although this container is NOT hardened (not a security boundary):{}",
            hardening::describe(&report.findings)
        );
    }

    // Signals are routed to the signalfd from here on, so a SIGTERM during the
    // ready wait is forwarded to the workload once it runs instead of killing us.
    let supervisor = supervise::Supervisor::new().map_err(|e| {
        fail(
            EXIT_SHIM_ERROR,
            format!("cannot set up signal handling: {e:#}"),
        )
    })?;

    // 2. Identity for arbitrary UIDs; 4a. scrub first so nothing we add is removed.
    let mut env = environment::inherited();
    let mut globs: Vec<String> = environment::DEFAULT_SCRUB_GLOBS
        .iter()
        .map(|g| (*g).to_owned())
        .collect();
    globs.extend(cli.scrub_env.iter().cloned());
    let removed = environment::scrub(&mut env, &globs, &cli.keep_env);
    if !removed.is_empty() {
        info!(
            "removed from the agent's environment: {}",
            removed.join(", ")
        );
    }
    let opts = identity::Options {
        home: cli.home.as_deref(),
        user_name: &cli.user_name,
        nss_wrapper: cli.nss_wrapper.as_deref(),
        passwd: Path::new("/etc/passwd"),
        group: Path::new("/etc/group"),
    };
    identity::prepare(&opts, &mut env).map_err(|e| {
        fail(
            EXIT_IDENTITY,
            format!("cannot prepare the agent's identity: {e:#}"),
        )
    })?;

    // 3. Sidecar.
    if cli.no_wait {
        info!("--no-wait: not waiting for the sidecar");
    } else {
        ready::wait(&cli.ready_file, cli.ready_timeout, || {
            supervisor.pending_termination()
        })
        .map_err(|e| match e {
            ready::NotReady::Signal(sig) => fail(128 + sig as i32, e.to_string()),
            ready::NotReady::Timeout(_) => fail(EXIT_SIDECAR_NOT_READY, e.to_string()),
        })?;
    }

    // 4b. Trust.
    if cli.ca_bundle.is_file() {
        environment::set_trust(&mut env, &cli.ca_bundle);
        info!("trust variables point at {}", cli.ca_bundle.display());
    } else {
        warning!(
            "CA bundle {} not found; TLS clients of the agent will not trust the sidecar's CA",
            cli.ca_bundle.display()
        );
    }

    // 5. Sessions, with the workload's environment; their children's statuses are
    // delivered by the supervisor's reaper.
    let waiters = supervise::Waiters::default();
    if cli.no_sessions {
        info!("--no-sessions: not serving exec sessions");
    } else {
        let config = session::Config {
            socket: cli.session_socket.clone(),
            sidecar_uid: cli.sidecar_uid,
            max_sessions: cli.max_sessions,
        };
        if let Err(e) = session::start(config, env.clone(), waiters.clone()) {
            warning!(
                "exec sessions are disabled: {e:#}; `palisade sandbox exec` will not reach this sandbox"
            );
        }
    }

    // 6. Run.
    supervisor
        .run(&cli.command, &env, &waiters)
        .map_err(|e| fail(e.code, e.message))
}
