//! The operator CLI: argument parsing and dispatch to one module per noun
//! (`palisade policy ...`, `palisade gateway serve`, `palisade keys ...`,
//! `palisade sandbox ...`, `palisade token inspect`); `palisade sandbox render`
//! and `palisade inject` print the sandbox pod offline ([`pod`]).
//!
//! Must never: print secrets, or exit 0 when the operator asked a question
//! whose answer is "this is broken".

mod exec;
mod gateway;
mod keys;
mod pod;
mod policy;
mod policy_remote;
mod remote;
mod sandbox;
mod secret;
mod token;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Palisade gateway (control plane) and operator CLI.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and explain policies locally; set and get them on a gateway.
    #[command(subcommand)]
    Policy(PolicyNoun),
    /// Run the gateway server.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// List or rotate the gateway's signing keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Register, show and delete sandboxes.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Store, list and delete secrets that policies source credentials from.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Inspect tokens (never printing them).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run the gateway and the local driver here: sandboxes on this machine.
    Up(Box<up::UpArgs>),
    /// Add the sandbox topology (init, sidecar, shim) to the pods of a Pod,
    /// Deployment, StatefulSet, Job or CronJob manifest and print it.
    Inject(Box<pod::InjectArgs>),
    /// Print the CustomResourceDefinitions (Sandbox, Policy) for `kubectl apply -f -`.
    Crds,
}

/// `palisade policy …`: the local commands and the gateway ones, side by side.
#[derive(Debug, Subcommand)]
enum PolicyNoun {
    #[command(flatten)]
    Local(policy::PolicyCommand),
    #[command(flatten)]
    Remote(policy_remote::RemotePolicyCommand),
}

/// Run a parsed command line; the exit code says whether it succeeded.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Policy(PolicyNoun::Local(cmd)) => policy::run(cmd),
        Command::Policy(PolicyNoun::Remote(cmd)) => policy_remote::run(cmd),
        Command::Gateway(cmd) => gateway::run(cmd),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Sandbox(cmd) => sandbox::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Up(args) => up::run(*args),
        Command::Secret(cmd) => secret::run(cmd),
        Command::Inject(args) => pod::run_inject_command(*args),
        Command::Crds => print_crds(),
    }
}

fn print_crds() -> ExitCode {
    match palisade_gateway::crd::crds_yaml() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot render the CRDs: {e}");
            ExitCode::FAILURE
        }
    }
}
