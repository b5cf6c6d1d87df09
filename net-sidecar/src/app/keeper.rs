//! The keeper: the sidecar's listening sockets outlive its data plane.
//!
//! `palisade-sidecar run` binds every listening socket once (admin, transparent egress,
//! explicit proxy, policy DNS over UDP and TCP), then runs the data plane as a child
//! process — the same binary and flags plus the hidden `--data-plane-sockets` — that
//! inherits them as file descriptors 3, 4, … (`LISTEN_FDS`, the systemd convention, read
//! with `listenfd`), and starts a new child whenever one dies (crash, SIGKILL, OOM kill).
//! A port is therefore never free while the sidecar container lives: a capability-less
//! agent cannot bind 15001/15053/15020/15080 to stop the data plane from coming back
//! (EADDRINUSE), and connections made while no child runs wait in the listen backlog
//! instead of reaching anything else. The child gets SIGKILL if the keeper dies.
//!
//! Owns: binding ([`Sockets::bind`]) and adopting ([`Sockets::inherit`]) the sockets,
//! the restart loop with backoff, forwarding SIGTERM/SIGINT, the readiness note a child
//! sends once (so a first start that fails — a bad policy file, say — still ends
//! `palisade-sidecar run` with the child's exit code, as before), and
//! `palisade_sidecar_data_plane_restarts_total`.
//! Must never: serve traffic itself, or give a socket to anything but its own child.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use std::os::unix::process::CommandExt as _;

use command_fds::{CommandFdExt as _, FdMapping};
use tokio::signal::unix::{SignalKind, signal};

use super::config::Config;
use super::shutdown::ReadyFile;
use crate::proxy::listener;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;
/// Wait before the first restart; doubled after each quick death, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// What a child sends on the notify socket once it is ready.
const READY: &[u8] = b"ready";

/// What an inherited descriptor is, in the order [`Sockets::roles`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Admin,
    Outbound,
    Explicit,
    DnsUdp,
    DnsTcp,
    Notify,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Outbound => "outbound",
            Role::Explicit => "explicit",
            Role::DnsUdp => "dns-udp",
            Role::DnsTcp => "dns-tcp",
            Role::Notify => "notify",
        }
    }

    const ALL: [Role; 6] = [
        Role::Admin,
        Role::Outbound,
        Role::Explicit,
        Role::DnsUdp,
        Role::DnsTcp,
        Role::Notify,
    ];

    fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Every listening socket of the data plane (std types: bound before any runtime).
#[derive(Debug)]
pub struct Sockets {
    pub admin: Vec<std::net::TcpListener>,
    pub outbound: Vec<std::net::TcpListener>,
    pub explicit: Vec<std::net::TcpListener>,
    pub dns: Vec<(std::net::UdpSocket, std::net::TcpListener)>,
    /// The child's end of the readiness note (`None` when not run by a keeper).
    pub notify: Option<UnixDatagram>,
}

/// Whether this network namespace can bind an address of `addr`'s family and scope.
fn family_available(addr: SocketAddr) -> bool {
    listener::bind_std(SocketAddr::new(addr.ip(), 0)).is_ok()
}

impl Sockets {
    /// Bind everything `config` names. An address family the namespace lacks is skipped
    /// (with a warning for TCP listeners), as before.
    pub fn bind(config: &Config) -> anyhow::Result<Sockets> {
        let admin = listener::bind_all("admin (/live, /ready, /metrics)", &config.admin)?;
        let dns_listen: Vec<SocketAddr> = config
            .dns_listen
            .iter()
            .copied()
            .filter(|a| family_available(*a))
            .collect();
        let dns = crate::dns::bind_pairs(&dns_listen)?;
        let outbound = listener::bind_all("transparent egress", &config.outbound)?;
        let explicit = listener::bind_all("the explicit proxy", &config.explicit)?;
        Ok(Sockets {
            admin,
            outbound,
            explicit,
            dns,
            notify: None,
        })
    }

    /// The descriptors to hand to a child, in order, with their roles.
    fn roles(&self) -> Vec<(Role, std::os::fd::BorrowedFd<'_>)> {
        let mut out = Vec::new();
        out.extend(self.admin.iter().map(|l| (Role::Admin, l.as_fd())));
        out.extend(self.outbound.iter().map(|l| (Role::Outbound, l.as_fd())));
        out.extend(self.explicit.iter().map(|l| (Role::Explicit, l.as_fd())));
        for (udp, tcp) in &self.dns {
            out.push((Role::DnsUdp, udp.as_fd()));
            out.push((Role::DnsTcp, tcp.as_fd()));
        }
        out
    }

    /// Adopt the sockets a keeper passed (`LISTEN_FDS`), checking each is what `roles`
    /// (the hidden `--data-plane-sockets` value) says it is.
    pub fn inherit(roles: &str) -> anyhow::Result<Sockets> {
        let roles: Vec<Role> = roles
            .split(',')
            .map(|r| {
                Role::parse(r).with_context(|| format!("--data-plane-sockets: unknown role {r:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut fds = listenfd::ListenFd::from_env();
        anyhow::ensure!(
            fds.len() == roles.len(),
            "--data-plane-sockets names {} sockets but LISTEN_FDS passes {}; \
             `--data-plane-sockets` is set only by palisade-sidecar's keeper",
            roles.len(),
            fds.len()
        );
        let mut sockets = Sockets {
            admin: Vec::new(),
            outbound: Vec::new(),
            explicit: Vec::new(),
            dns: Vec::new(),
            notify: None,
        };
        let missing = |i: usize| anyhow::anyhow!("inherited socket {i} was already taken");
        let mut pending_udp = None;
        for (i, role) in roles.into_iter().enumerate() {
            let what = || format!("inherited socket {i} ({})", role.as_str());
            match role {
                Role::Admin | Role::Outbound | Role::Explicit | Role::DnsTcp => {
                    let l = fds
                        .take_tcp_listener(i)
                        .with_context(what)?
                        .ok_or_else(|| missing(i))?;
                    match role {
                        Role::Admin => sockets.admin.push(l),
                        Role::Outbound => sockets.outbound.push(l),
                        Role::Explicit => sockets.explicit.push(l),
                        _ => {
                            let udp: std::net::UdpSocket = pending_udp
                                .take()
                                .with_context(|| format!("{}: no dns-udp before it", what()))?;
                            sockets.dns.push((udp, l));
                        }
                    }
                }
                Role::DnsUdp => {
                    let u = fds
                        .take_udp_socket(i)
                        .with_context(what)?
                        .ok_or_else(|| missing(i))?;
                    pending_udp = Some(u);
                }
                Role::Notify => {
                    let d = fds
                        .take_unix_datagram(i)
                        .with_context(what)?
                        .ok_or_else(|| missing(i))?;
                    sockets.notify = Some(d);
                }
            }
        }
        anyhow::ensure!(
            pending_udp.is_none(),
            "a dns-udp socket without its dns-tcp"
        );
        Ok(sockets)
    }
}

/// Tell the keeper (if any) that this data plane is ready; a keeper that is gone is not an
/// error (the parent-death signal ends this process soon).
pub fn notify_ready(notify: Option<&UnixDatagram>) {
    if let Some(socket) = notify
        && let Err(err) = socket.send(READY)
    {
        tracing::debug!(error = %err, "cannot tell the keeper the data plane is ready");
    }
}

/// In a child: die with the keeper (SIGKILL), and refuse to run if it is gone already.
pub fn bind_to_keeper(keeper: u32) -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("cannot set the parent-death signal")?;
    let parent = nix::unistd::getppid().as_raw();
    anyhow::ensure!(
        u32::try_from(parent).ok() == Some(keeper),
        "the keeper (pid {keeper}) is gone; exiting"
    );
    Ok(())
}

/// Run data-plane children on `sockets` until told to stop. Returns the exit code of the
/// last child: the one that stopped on SIGTERM/SIGINT, or a first child that failed before
/// it was ever ready.
/// A dead child's ready file (`--ready-file`) is removed: nobody serves until the next
/// child writes it again.
pub fn keep(sockets: Sockets, ready_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the keeper's runtime")?;
    runtime.block_on(keep_async(sockets, ready_file.map(ReadyFile)))
}

async fn keep_async(sockets: Sockets, ready_file: Option<ReadyFile>) -> anyhow::Result<ExitCode> {
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    let (ours, theirs) = UnixDatagram::pair().context("cannot create the readiness socket")?;
    ours.set_nonblocking(true)?;
    let ours = tokio::net::UnixDatagram::from_std(ours)?;
    let theirs = OwnedFd::from(theirs);
    let exe = std::env::current_exe().context("cannot find the sidecar's own executable")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let keeper = std::process::id();
    let mut ever_ready = false;
    let mut restarts: u64 = 0;
    // Dropped (our copies closed) once told to stop: a draining data plane then closes
    // the last copies and new connections are refused at once, as without a keeper.
    let mut sockets = Some(sockets);
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let Some(held) = sockets.as_ref() else {
            return Ok(ExitCode::SUCCESS);
        };
        let mut child = spawn(&exe, &args, held, &theirs, keeper, restarts)?;
        let pid = child.id();
        let mut stopping = false;
        let mut buf = [0u8; 16];
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.context("cannot wait for the data plane")?,
                _ = term.recv() => {
                    forward(pid, nix::sys::signal::Signal::SIGTERM);
                    stopping = true;
                    sockets = None;
                }
                _ = int.recv() => {
                    forward(pid, nix::sys::signal::Signal::SIGINT);
                    stopping = true;
                    sockets = None;
                }
                got = ours.recv(&mut buf) => {
                    if matches!(got, Ok(n) if &buf[..n] == READY) && !ever_ready {
                        ever_ready = true;
                        tracing::debug!(pid, "data plane ready");
                    }
                }
            }
        };
        let code = exit_code(&status);
        if stopping {
            return Ok(ExitCode::from(code));
        }
        if !ever_ready {
            // A first start that fails (bad policy, gateway refused the identity…): the
            // child said why on stderr; end like a sidecar without a keeper would.
            return Ok(ExitCode::from(code));
        }
        if let Some(f) = &ready_file {
            f.remove();
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = MIN_BACKOFF;
        }
        restarts += 1;
        tracing::error!(%status, restart_in = ?backoff, restarts,
            "the data plane exited; its listening sockets stay open and a new one starts");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn spawn(
    exe: &std::path::Path,
    args: &[OsString],
    sockets: &Sockets,
    notify: &OwnedFd,
    keeper: u32,
    restarts: u64,
) -> anyhow::Result<tokio::process::Child> {
    let mut roles = sockets.roles();
    roles.push((Role::Notify, notify.as_fd()));
    let mut mappings = Vec::with_capacity(roles.len());
    let mut names = Vec::with_capacity(roles.len());
    for (n, (role, fd)) in roles.into_iter().enumerate() {
        mappings.push(FdMapping {
            parent_fd: fd
                .try_clone_to_owned()
                .context("cannot duplicate a listening socket")?,
            child_fd: FIRST_FD + i32::try_from(n).context("too many sockets")?,
        });
        names.push(role.as_str());
    }
    let count = mappings.len();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .arg(format!("--data-plane-sockets={}", names.join(",")))
        .arg(format!("--data-plane-keeper={keeper}"))
        .arg(format!("--data-plane-restarts={restarts}"))
        .env("LISTEN_FDS", count.to_string())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    if cmd.fd_mappings(mappings).is_err() {
        bail!("inherited socket numbers collide (a bug)");
    }
    // A process group of its own: a signal to the keeper's group (Ctrl-C, a supervisor's
    // killpg) reaches the data plane once, through the keeper, never twice (a second
    // SIGTERM means "exit without draining").
    cmd.process_group(0);
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the data plane")
}

fn forward(pid: Option<u32>, signal: nix::sys::signal::Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// The code to exit with for a child's status: its own, or 128 + signal.
fn exit_code(status: &std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        (None, None) => 1,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_unknown_roles_are_refused() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("ssh"), None);
        let err = Sockets::inherit("admin,bogus").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown role \"bogus\""),
            "{err:#}"
        );
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(exit_code(&std::process::ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(&std::process::ExitStatus::from_raw(1 << 8)), 1);
        assert_eq!(exit_code(&std::process::ExitStatus::from_raw(9)), 137);
    }
}
