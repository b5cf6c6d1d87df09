//! `palisade`: the gateway and the operator CLI.
use clap::Parser;

/// Palisade gateway (control plane) and operator CLI.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about)]
enum Cli {}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {}
}
