//! `palisade sandbox create|get|list|delete` against a gateway.

use std::collections::BTreeMap;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;
use palisade_api::SandboxSpec;

use super::remote::{Remote, fail, print_json};

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Register a sandbox; prints its one-time bootstrap token (shown once).
    Create(CreateArgs),
    /// Show one sandbox.
    Get {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List sandboxes.
    List(Remote),
    /// Delete a sandbox; its tokens stop working at once.
    Delete {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Display name (lowercase letters, digits, `-`).
    pub name: String,
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long)]
    pub service_account: Option<String>,
    /// Name of the policy the sandbox runs under.
    #[arg(long)]
    pub policy: Option<String>,
    /// Labels as KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub remote: Remote,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

pub fn run(cmd: SandboxCommand) -> ExitCode {
    let (name, result) = match cmd {
        SandboxCommand::Create(args) => {
            let spec = SandboxSpec {
                name: args.name,
                namespace: args.namespace,
                service_account: args.service_account,
                uid: None,
                gid: None,
                policy: args.policy,
                labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
            };
            let body = serde_json::to_vec(&spec)
                .map(Bytes::from)
                .map_err(Into::into);
            (
                "sandbox create",
                body.and_then(|b| {
                    args.remote
                        .call(Method::POST, "/v1/sandboxes", Some("application/json"), b)
                }),
            )
        }
        SandboxCommand::Get { id, remote } => (
            "sandbox get",
            remote.call(
                Method::GET,
                &format!("/v1/sandboxes/{id}"),
                None,
                Bytes::new(),
            ),
        ),
        SandboxCommand::List(remote) => (
            "sandbox list",
            remote.call(Method::GET, "/v1/sandboxes", None, Bytes::new()),
        ),
        SandboxCommand::Delete { id, remote } => (
            "sandbox delete",
            remote.call(
                Method::DELETE,
                &format!("/v1/sandboxes/{id}"),
                None,
                Bytes::new(),
            ),
        ),
    };
    match result.and_then(|a| print_json(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(name, &e),
    }
}
