//! `palisade policy set|get --gateway URL`: store and fetch policies on a
//! gateway. Merged into `palisade policy` beside the local `check`/`explain`.
//! `set --namespace NS` stores the policy in namespace NS (without it: a
//! cluster-wide policy, which only admins may write).

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
        /// Namespace the policy belongs to (its sandboxes' namespace); without
        /// it the policy is cluster-wide (admin only). Fixed once created.
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
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

fn set(file: &PathBuf, namespace: Option<&str>, remote: &Remote) -> anyhow::Result<()> {
    if let Some(ns) = namespace
        && !palisade_gateway::principal::valid_label(ns)
    {
        anyhow::bail!("--namespace `{ns}`: use 1-63 lowercase letters, digits and `-`");
    }
    let bytes = read(file)?;
    // Validate locally first, for line:column errors and the name.
    let policy = palisade_policy::parse_policy(&bytes)
        .map_err(|e| anyhow::anyhow!("{}", e.render(&file.display().to_string())))?;
    if let Some((path, message)) =
        palisade_gateway::sessions::credentials::local_only_sources(&policy)
            .into_iter()
            .next()
    {
        anyhow::bail!("{}: {path}: {message}", file.display());
    }
    let query = namespace
        .map(|ns| format!("?namespace={ns}"))
        .unwrap_or_default();
    let answer = remote.call(
        Method::PUT,
        &format!("/v1/policies/{}{query}", policy.metadata.name),
        Some("application/yaml"),
        Bytes::from(bytes),
    )?;
    print_json(&answer)
}

pub fn run(cmd: RemotePolicyCommand) -> ExitCode {
    let (name, result) = match &cmd {
        RemotePolicyCommand::Set {
            file,
            namespace,
            remote,
        } => ("policy set", set(file, namespace.as_deref(), remote)),
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
