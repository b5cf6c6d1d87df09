//! `palisade sandbox create|get|list|logs|exec|delete` against a gateway
//! (`render`, offline, is in [`super::pod`]).
//!
//! `create --policy` takes a policy name or a policy file (uploaded first,
//! under its `metadata.name`); `-- CMD…` is the agent's command, run by the
//! gateway's driver (`palisade up`). Sandboxes are named by NAME or id.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;
use palisade_api::{SandboxList, SandboxSpec};

use super::remote::{Remote, fail, print_json};

/// How often `logs --follow` asks for more.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Register a sandbox (and, under `palisade up`, start it). Without a
    /// driver it prints the one-time bootstrap token (shown once).
    Create(CreateArgs),
    /// Show one sandbox.
    Get {
        /// Sandbox name or id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List sandboxes.
    List(Remote),
    /// Print a sandbox's log (sidecar and agent) kept by `palisade up`.
    Logs(LogsArgs),
    /// Run a command in a sandbox through the gateway (`-i` stdin, `-t` terminal).
    Exec(super::exec::ExecArgs),
    /// Print the pod (and the ConfigMap of a file policy) the Kubernetes
    /// driver would create for a sandbox, for review and GitOps; offline.
    Render(Box<super::pod::RenderArgs>),
    /// Delete a sandbox; its tokens stop working at once and `palisade up`
    /// stops and removes its processes and namespace.
    Delete {
        /// Sandbox name or id.
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
    /// Policy the sandbox runs under: a policy name on the gateway, or a
    /// policy file (YAML/JSON), uploaded first under its `metadata.name`.
    #[arg(long, value_name = "NAME|FILE")]
    pub policy: Option<String>,
    /// Labels as KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub remote: Remote,
    /// The agent's command (default under `palisade up`: `sleep infinity`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Sandbox name or id.
    pub name: String,
    /// Keep printing new lines until the agent ends (or Ctrl-C).
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub remote: Remote,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// Is `s` a sandbox id (`sbx-` + 32 lowercase hex)?
fn is_id(s: &str) -> bool {
    s.strip_prefix("sbx-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// A sandbox name or id → its id (names must be unambiguous).
pub fn resolve_id(remote: &Remote, name_or_id: &str) -> anyhow::Result<String> {
    if is_id(name_or_id) {
        return Ok(name_or_id.to_owned());
    }
    let answer = remote.call(Method::GET, "/v1/sandboxes", None, Bytes::new())?;
    let list: SandboxList =
        serde_json::from_slice(&answer.body).context("the gateway's sandbox list is invalid")?;
    let ids: Vec<String> = list
        .sandboxes
        .into_iter()
        .filter(|s| s.spec.name == name_or_id)
        .map(|s| s.id.to_string())
        .collect();
    match ids.as_slice() {
        [id] => Ok(id.clone()),
        [] => bail!("no sandbox named `{name_or_id}`; `palisade sandbox list` shows them"),
        _ => bail!(
            "{} sandboxes are named `{name_or_id}` ({}); give the id",
            ids.len(),
            ids.join(", ")
        ),
    }
}

/// `--policy NAME|FILE` → the policy name, uploading the file first (into
/// the sandbox's `--namespace`, else cluster-wide).
fn policy_name(remote: &Remote, arg: &str, namespace: Option<&str>) -> anyhow::Result<String> {
    let path = Path::new(arg);
    let looks_like_file = arg.contains('/')
        || arg.ends_with(".yaml")
        || arg.ends_with(".yml")
        || arg.ends_with(".json");
    if !looks_like_file && !path.is_file() {
        return Ok(arg.to_owned());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read policy file {arg}"))?;
    let policy =
        palisade_policy::parse_policy(&bytes).map_err(|e| anyhow::anyhow!("{}", e.render(arg)))?;
    let name = policy.metadata.name.clone();
    let query = namespace
        .map(|ns| format!("?namespace={ns}"))
        .unwrap_or_default();
    remote.call(
        Method::PUT,
        &format!("/v1/policies/{name}{query}"),
        Some("application/yaml"),
        Bytes::from(bytes),
    )?;
    eprintln!("policy {name} uploaded from {arg}");
    Ok(name)
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    let policy = args
        .policy
        .as_deref()
        .map(|p| policy_name(&args.remote, p, args.namespace.as_deref()))
        .transpose()?;
    let spec = SandboxSpec {
        name: args.name,
        namespace: args.namespace,
        service_account: args.service_account,
        uid: None,
        gid: None,
        policy,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        command: args.command,
    };
    let body = Bytes::from(serde_json::to_vec(&spec)?);
    let answer = args.remote.call(
        Method::POST,
        "/v1/sandboxes",
        Some("application/json"),
        body,
    )?;
    print_json(&answer)
}

fn logs(args: &LogsArgs) -> anyhow::Result<()> {
    let id = resolve_id(&args.remote, &args.name)?;
    let mut after = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        let answer = args.remote.call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/logs?after={after}"),
            None,
            Bytes::new(),
        )?;
        stdout.write_all(&answer.body)?;
        stdout.flush()?;
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let next = header("palisade-log-next")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(after);
        let progressed = next > after;
        after = next;
        if progressed {
            continue;
        }
        if !args.follow || header("palisade-agent-exit").is_some() {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_INTERVAL);
    }
}

pub fn run(cmd: SandboxCommand) -> ExitCode {
    let (name, result) = match cmd {
        SandboxCommand::Exec(args) => return super::exec::run(args),
        SandboxCommand::Render(args) => return super::pod::run_render(*args),
        SandboxCommand::Create(args) => ("sandbox create", create(args)),
        SandboxCommand::Get { id, remote } => (
            "sandbox get",
            resolve_id(&remote, &id).and_then(|id| {
                remote
                    .call(
                        Method::GET,
                        &format!("/v1/sandboxes/{id}"),
                        None,
                        Bytes::new(),
                    )
                    .and_then(|a| print_json(&a))
            }),
        ),
        SandboxCommand::List(remote) => (
            "sandbox list",
            remote
                .call(Method::GET, "/v1/sandboxes", None, Bytes::new())
                .and_then(|a| print_json(&a)),
        ),
        SandboxCommand::Logs(args) => ("sandbox logs", logs(&args)),
        SandboxCommand::Delete { id, remote } => (
            "sandbox delete",
            resolve_id(&remote, &id).and_then(|id| {
                remote
                    .call(
                        Method::DELETE,
                        &format!("/v1/sandboxes/{id}"),
                        None,
                        Bytes::new(),
                    )
                    .and_then(|a| print_json(&a))
            }),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(name, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_recognised() {
        assert!(is_id(&format!("sbx-{}", "0a".repeat(16))));
        assert!(!is_id("demo"));
        assert!(!is_id("sbx-XYZ"));
    }
}
