//! `palisade-sidecar`: `init` installs capture rules and exits; `run` is the data plane.
//!
//! Module map:
//! * [`capture`] — redirect + fence rules (iptables-restore / nft), `init`, `cleanup`, `validate`.
//! * [`run`] — the data plane: listeners, protocol peek, policy decisions, splice, admin.
//! * [`dns`] — the policy DNS server on 15053 and the answer cache that anti-spoofing reads.
//! * [`tls`] — the sandbox CA, leaf certificates, rustls configurations for interception.
//! * [`credentials`] — credential sources and the values injected into inspected requests.
//! * [`identity`] — with `--gateway`: the sandbox JWT, the gateway session (policy,
//!   credentials, relays), workload tokens and the audit push.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod capture;
mod credentials;
mod dns;
mod identity;
mod run;
mod tls;

/// Default UID (and GID) the sidecar's data plane runs as; its traffic is never redirected.
pub const DEFAULT_SIDECAR_UID: u32 = 1337;
/// Transparent egress listener.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Policy DNS listener (udp + tcp).
pub const DEFAULT_DNS_PORT: u16 = 15053;
/// Explicit proxy (CONNECT and absolute-form HTTP).
pub const DEFAULT_EXPLICIT_PROXY_PORT: u16 = 15080;
/// Admin: /live, /ready, /metrics.
pub const DEFAULT_ADMIN_PORT: u16 = 15020;
/// Loopback ports reserved for the sidecar; the agent may not connect to them.
pub const DEFAULT_SIDECAR_PORT_RANGE: (u16, u16) = (15000, 15099);

/// Palisade net-sidecar: egress capture, fence and policy enforcement for one pod.
#[derive(Debug, Parser)]
#[command(name = "palisade-sidecar", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of `run`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Install redirect and fence rules in this network namespace, then exit (needs NET_ADMIN).
    Init(capture::InitArgs),
    /// Remove exactly the rules `init` installed.
    Cleanup(capture::CleanupArgs),
    /// Prove from inside the namespace, as a non-sidecar UID, that capture and fence work.
    Validate(capture::ValidateArgs),
    /// Run the data plane.
    Run(run::RunArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => capture::init(args),
        Command::Cleanup(args) => capture::cleanup(args),
        Command::Validate(args) => capture::validate(args),
        Command::Run(args) => run::main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("palisade-sidecar: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
