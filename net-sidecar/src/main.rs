//! `palisade-sidecar`: `init` installs capture rules and exits; `run` is the data plane.
use clap::Parser;

/// Palisade net-sidecar.
#[derive(Debug, Parser)]
#[command(name = "palisade-sidecar", version, about)]
enum Cli {}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {}
}
