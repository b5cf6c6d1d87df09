//! `palisade`: the gateway and the operator CLI.
//!
//! The operator CLI lives in [`cli`]; the gateway server is the
//! `palisade_gateway` library, run by `palisade gateway serve`.

mod cli;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse())
}
