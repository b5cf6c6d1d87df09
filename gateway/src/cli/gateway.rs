//! `palisade gateway serve`: run the gateway (or print its effective config).

use std::process::ExitCode;

use clap::Subcommand;
use palisade_gateway::config::{Config, ServeArgs};

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Run the gateway server.
    Serve(ServeArgs),
}

pub fn run(cmd: GatewayCommand) -> ExitCode {
    let GatewayCommand::Serve(args) = cmd;
    let config = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade gateway serve: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.redacted_yaml());
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade gateway serve: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(palisade_gateway::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade gateway serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}
