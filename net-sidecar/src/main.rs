//! `palisade-sidecar`: `init` installs capture rules and exits; `run` is the data plane.
//!
//! Module map:
//! * [`capture`] — redirect + fence rules (iptables-restore / nft), `init`, `cleanup`, `validate`.
//! * [`app`] — `run`: the composition root (config, keeper, start-up, drain).
//! * [`proxy`] — the data plane: listeners, protocol peek, policy decisions, splice,
//!   TLS inspection, HTTP.
//! * [`policy`] — the policy in force: a file or the gateway's feed, hot-reloaded.
//! * [`admin`] — `/live`, `/ready`, `/metrics`, readiness state and the metrics registry.
//! * [`dns`] — the policy DNS server on 15053 and the answer cache that anti-spoofing reads.
//! * [`tls`] — the sandbox CA, leaf certificates, rustls configurations for interception.
//! * [`credentials`] — credential sources and the values injected into inspected requests.
//! * [`identity`] — with `--gateway`: the sandbox JWT, the gateway session (policy,
//!   credentials, relays), workload tokens and the audit push.
//!
//! Default ports and UIDs are [`palisade_api::defaults`], shared with the shim and the
//! gateway's drivers.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod admin;
mod app;
mod capture;
mod credentials;
mod dns;
mod identity;
mod policy;
mod proxy;
mod tls;

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
    Run(app::RunArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => capture::init(args),
        Command::Cleanup(args) => capture::cleanup(args),
        Command::Validate(args) => capture::validate(args),
        Command::Run(args) => app::main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("palisade-sidecar: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
