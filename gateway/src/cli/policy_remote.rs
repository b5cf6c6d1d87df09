//! `palisade policy set|get --gateway URL`: store and fetch policies on a
//! gateway. Merged into `palisade policy` beside the local `check`/`explain`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use http::Method;

use super::remote::{Remote, fail, print_json};

#[derive(Debug, Subcommand)]
pub enum RemotePolicyCommand {
    /// Validate and store a policy on the gateway under its metadata.name.
    Set {
        /// Policy file (YAML or JSON); `-` reads standard input.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a stored policy (with its revision and ETag).
    Get {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn read(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(bytes)
}

fn set(file: &PathBuf, remote: &Remote) -> anyhow::Result<()> {
    let bytes = read(file)?;
    // Validate locally first, for line:column errors and the name.
    let policy = palisade_policy::parse_policy(&bytes)
        .map_err(|e| anyhow::anyhow!("{}", e.render(&file.display().to_string())))?;
    let answer = remote.call(
        Method::PUT,
        &format!("/v1/policies/{}", policy.metadata.name),
        Some("application/yaml"),
        Bytes::from(bytes),
    )?;
    print_json(&answer)
}

pub fn run(cmd: RemotePolicyCommand) -> ExitCode {
    let (name, result) = match &cmd {
        RemotePolicyCommand::Set { file, remote } => ("policy set", set(file, remote)),
        RemotePolicyCommand::Get { name, remote } => (
            "policy get",
            remote
                .call(
                    Method::GET,
                    &format!("/v1/policies/{name}"),
                    None,
                    Bytes::new(),
                )
                .and_then(|a| print_json(&a)),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(name, &e),
    }
}
