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
    // Logs, and OTLP span export when OTEL_EXPORTER_OTLP_ENDPOINT is set (its
    // gRPC channel lives on the runtime, so it is created inside it).
    let telemetry = match rt.block_on(async { crate::telemetry::init("info") }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("palisade gateway serve: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(palisade_gateway::server::serve(config));
    // After the server drained, before the runtime goes: flush the last spans.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade gateway serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}
