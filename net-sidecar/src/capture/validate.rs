//! `palisade-sidecar validate`: prove from inside the namespace, as a non-sidecar UID, that
//! TCP is redirected to the outbound port and that other traffic is refused (like Linkerd's
//! network-validator). It binds the outbound port itself, so run it BEFORE `run` starts.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;

/// `--ipv6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// Check IPv6 when the namespace has an IPv6 route to the probe address.
    Auto,
    /// IPv6 must be captured and fenced.
    Require,
    /// Do not check IPv6.
    Skip,
}

/// Exit code: everything works.
pub const EXIT_OK: u8 = 0;
/// Exit code: unexpected error (bad flags, port in use, …).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: TCP is not redirected to the outbound port.
pub const EXIT_REDIRECT: u8 = 2;
/// Exit code: traffic that must be refused got out (or vanished silently).
pub const EXIT_FENCE: u8 = 3;

/// What validate needs (from [`super::ValidateArgs`]).
#[derive(Debug, Clone)]
pub struct Probe {
    /// Port the capture rules redirect TCP to (we listen there ourselves).
    pub outbound_port: u16,
    /// IPv4 TCP probe destination (TEST-NET).
    pub tcp_v4: SocketAddr,
    /// IPv6 TCP probe destination (documentation prefix).
    pub tcp_v6: SocketAddr,
    /// IPv4 UDP probe destination.
    pub udp_v4: SocketAddr,
    /// IPv6 UDP probe destination.
    pub udp_v6: SocketAddr,
    /// IPv6 handling.
    pub ipv6: Ipv6Mode,
    /// Per-step timeout.
    pub timeout: Duration,
    /// The sidecar UID (validate refuses to run as it).
    pub sidecar_uid: u32,
}

enum Check {
    Pass(String),
    Skipped(String),
    Fail(u8, String),
}

fn errno_name(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => format!("{:?}", Errno::from_raw(code)),
        None => format!("{:?}", err.kind()),
    }
}

fn is_no_route(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENETUNREACH | Errno::EADDRNOTAVAIL | Errno::EAFNOSUPPORT)
    )
}

fn is_refusal(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::ECONNREFUSED | Errno::EPERM | Errno::EACCES | Errno::EHOSTUNREACH)
    )
}

/// Accept connections until the deadline, answering each with `token`.
fn responder(listener: TcpListener, token: Arc<String>, deadline: Instant) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.write_all(format!("{token}\n").as_bytes());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return,
        }
    }
}

fn tcp_check(dest: SocketAddr, p: &Probe, token: &str, v6_optional: bool) -> Check {
    let mut conn = match TcpStream::connect_timeout(&dest, p.timeout) {
        Ok(c) => c,
        Err(e) if v6_optional && is_no_route(&e) => {
            return Check::Skipped(format!("TCP {dest}: no IPv6 route ({})", errno_name(&e)));
        }
        Err(e) => {
            return Check::Fail(
                EXIT_REDIRECT,
                format!(
                    "TCP to {dest} did not reach our listener on port {}: {} ({}) — are the \
                     capture rules installed (palisade-sidecar init) with --outbound-port {}?",
                    p.outbound_port,
                    e,
                    errno_name(&e),
                    p.outbound_port
                ),
            );
        }
    };
    let _ = conn.set_read_timeout(Some(p.timeout));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 128];
    while !buf.contains(&b'\n') && buf.len() < 512 {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let got = String::from_utf8_lossy(&buf);
    if got.trim() == token {
        Check::Pass(format!("TCP {dest} redirected to port {}", p.outbound_port))
    } else {
        Check::Fail(
            EXIT_REDIRECT,
            format!(
                "TCP to {dest} connected but not to our listener on port {} (no token; the \
                 connection went somewhere else)",
                p.outbound_port
            ),
        )
    }
}

fn udp_check(dest: SocketAddr, p: &Probe, v6_optional: bool) -> Check {
    let bind: SocketAddr = if dest.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let refused = |stage: &str, e: &std::io::Error| {
        Check::Pass(format!("UDP {dest} refused at {stage} ({})", errno_name(e)))
    };
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) if v6_optional && is_no_route(&e) => {
            return Check::Skipped(format!("UDP {dest}: no IPv6 ({})", errno_name(&e)));
        }
        Err(e) => return Check::Fail(EXIT_ERROR, format!("cannot open a UDP socket: {e}")),
    };
    match sock.connect(dest) {
        Ok(()) => {}
        Err(e) if v6_optional && is_no_route(&e) => {
            return Check::Skipped(format!("UDP {dest}: no IPv6 route ({})", errno_name(&e)));
        }
        Err(e) if is_refusal(&e) => return refused("connect", &e),
        Err(e) => {
            return Check::Fail(EXIT_FENCE, format!("UDP to {dest}: connect failed: {e}"));
        }
    }
    match sock.send(b"palisade-validate\n") {
        Ok(_) => {}
        Err(e) if is_refusal(&e) => return refused("send", &e),
        Err(e) if v6_optional && is_no_route(&e) => {
            return Check::Skipped(format!("UDP {dest}: no IPv6 route ({})", errno_name(&e)));
        }
        Err(e) => {
            return Check::Fail(
                EXIT_FENCE,
                format!("UDP to {dest}: send failed with an unexpected error: {e}"),
            );
        }
    }
    let _ = sock.set_read_timeout(Some(p.timeout));
    let mut buf = [0u8; 64];
    match sock.recv(&mut buf) {
        Err(e) if is_refusal(&e) => refused("recv", &e),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Check::Fail(
            EXIT_FENCE,
            format!(
                "UDP to {dest} was sent without error and no refusal came back within {:?} — \
                 the fence is not installed (palisade-sidecar init)",
                p.timeout
            ),
        ),
        Err(e) => Check::Fail(EXIT_FENCE, format!("UDP to {dest}: unexpected error {e}")),
        Ok(_) => Check::Fail(
            EXIT_FENCE,
            format!("UDP to {dest} got a reply — UDP egress is open"),
        ),
    }
}

/// Run every check; print one verdict line; return the exit code.
pub fn run(p: &Probe) -> anyhow::Result<ExitCode> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid == p.sidecar_uid {
        anyhow::bail!(
            "validate must run as a non-sidecar UID (UID {uid} is the sidecar UID, whose traffic \
             is deliberately not captured); run it as the agent UID"
        );
    }
    let check_v6 = p.ipv6 != Ipv6Mode::Skip && super::backend::ipv6_present();
    if p.ipv6 == Ipv6Mode::Require && !check_v6 {
        anyhow::bail!("--ipv6 require: this namespace has no IPv6 stack");
    }
    let v6_optional = p.ipv6 == Ipv6Mode::Auto;
    let token = Arc::new(format!("palisade-validate-{:032x}", rand::random::<u128>()));
    // Enough for every step to time out once, plus slack.
    let deadline = Instant::now() + p.timeout * 6;

    let mut listen: Vec<SocketAddr> = vec![SocketAddr::from(([127, 0, 0, 1], p.outbound_port))];
    if check_v6 {
        listen.push(SocketAddr::from((
            [0, 0, 0, 0, 0, 0, 0, 1],
            p.outbound_port,
        )));
    }
    let mut threads = Vec::new();
    for addr in listen {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) if e.kind() == ErrorKind::AddrInUse => anyhow::bail!(
                "port {} is already in use on {addr}: run validate before the sidecar starts \
                 (it listens there itself), or pass the --outbound-port the rules were installed \
                 with",
                p.outbound_port
            ),
            Err(e) if addr.is_ipv6() && v6_optional => {
                super::warn(&format!("skipping IPv6: cannot listen on {addr}: {e}"));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
        };
        let token = Arc::clone(&token);
        threads.push(std::thread::spawn(move || {
            responder(listener, token, deadline)
        }));
    }
    let v6_listening = threads.len() > 1;

    let mut checks = vec![tcp_check(p.tcp_v4, p, &token, false)];
    if check_v6 && v6_listening {
        checks.push(tcp_check(p.tcp_v6, p, &token, v6_optional));
    }
    checks.push(udp_check(p.udp_v4, p, false));
    if check_v6 {
        checks.push(udp_check(p.udp_v6, p, v6_optional));
    }

    let worst = checks
        .iter()
        .filter_map(|c| match c {
            Check::Fail(code, msg) => Some((*code, msg.as_str())),
            _ => None,
        })
        .min_by_key(|(code, _)| match *code {
            EXIT_REDIRECT => 0,
            EXIT_FENCE => 1,
            _ => 2,
        });
    let code = match worst {
        Some((code, msg)) => {
            let kind = match code {
                EXIT_REDIRECT => "redirect not working",
                EXIT_FENCE => "fence not working",
                _ => "error",
            };
            println!("palisade-sidecar validate: FAIL ({kind}): {msg}");
            code
        }
        None => {
            let parts: Vec<&str> = checks
                .iter()
                .filter_map(|c| match c {
                    Check::Pass(m) | Check::Skipped(m) => Some(m.as_str()),
                    Check::Fail(..) => None,
                })
                .collect();
            println!("palisade-sidecar validate: OK: {}", parts.join("; "));
            EXIT_OK
        }
    };
    // Responder threads end at the deadline on their own; do not wait for them.
    drop(threads);
    Ok(ExitCode::from(code))
}
