//! `palisade-shim`: the agent container's entrypoint.
use clap::Parser;

/// Palisade agent-shim: verifies hardening, waits for the sidecar, runs the agent as PID 1.
#[derive(Debug, Parser)]
#[command(name = "palisade-shim", version, about)]
struct Cli {
    /// The agent command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "palisade-shim is not implemented yet (see issue 7); refusing to run {:?} without the hardening checks",
        cli.command.first()
    )
}
