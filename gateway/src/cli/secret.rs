//! `palisade secret set|list|delete`: secrets in the gateway store, which
//! policies source with `from: {secret: {name, key}}` — only the policies and
//! hosts the secret's allowance names (`--allow-namespace`, `--allow-policy`,
//! `--allow-host`; none: no policy may use it).
//!
//! Must never: take a value on the command line (it would land in shell
//! history and `ps`), or print one — values come from files or environment
//! variables, and answers show SHA-256 fingerprints only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;
use palisade_api::session::{SecretInfo, SecretList, SecretWrite};

use super::remote::{Remote, fail};
use palisade_gateway::sessions::credentials::Allowance;
use palisade_gateway::store::SecretAllowance;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create or replace a secret from files and/or environment variables.
    Set(SetArgs),
    /// List secrets: names, keys and SHA-256 fingerprints (never values).
    List(Remote),
    /// Delete a secret.
    Delete {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Secret name (1-63 lowercase letters, digits, `-`).
    pub name: String,
    /// KEY=PATH: the key's value is the file's content (repeatable).
    #[arg(long = "from-file", value_name = "KEY=PATH", value_parser = parse_pair)]
    pub from_file: Vec<(String, String)>,
    /// KEY=VAR: the key's value is environment variable VAR (repeatable).
    #[arg(long = "from-env", value_name = "KEY=VAR", value_parser = parse_pair)]
    pub from_env: Vec<(String, String)>,
    /// Policies of namespace NS may use the secret (repeatable).
    #[arg(long = "allow-namespace", value_name = "NS")]
    pub allow_namespace: Vec<String>,
    /// This policy may use the secret: NAME (cluster-wide) or NS/NAME (repeatable).
    #[arg(long = "allow-policy", value_name = "[NS/]NAME")]
    pub allow_policy: Vec<String>,
    /// The secret may be sent to HOST (any port) or HOST:PORT; HOST as in
    /// policies (`api.github.com`, `*.example.com`, `[2001:db8::1]:443`) (repeatable).
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    pub allow_host: Vec<String>,
    #[command(flatten)]
    pub remote: Remote,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=SOURCE")),
    }
}

/// Collect the values; a file's single trailing newline is dropped (the
/// usual `echo token > file`), anything else is kept byte for byte.
fn collect(args: &SetArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::new();
    for (key, path) in &args.from_file {
        let path = PathBuf::from(path);
        let mut value = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} for key `{key}` (UTF-8 text)",
                path.display()
            )
        })?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        if data.insert(key.clone(), value).is_some() {
            bail!("key `{key}` is given twice");
        }
    }
    for (key, var) in &args.from_env {
        let value = std::env::var(var).with_context(|| {
            format!("environment variable {var} (for key `{key}`) is not set or not UTF-8")
        })?;
        if data.insert(key.clone(), value).is_some() {
            bail!("key `{key}` is given twice");
        }
    }
    if data.is_empty() {
        bail!("give at least one --from-file KEY=PATH or --from-env KEY=VAR");
    }
    Ok(data)
}

fn show(info: &SecretInfo) {
    println!("{} (revision {})", info.name, info.revision);
    for k in &info.keys {
        println!("  {}  {}", k.key, k.fingerprint);
    }
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".to_owned()
        } else {
            l.join(", ")
        }
    };
    println!("  allowed namespaces: {}", list(&info.allowed_namespaces));
    println!("  allowed policies:   {}", list(&info.allowed_policies));
    println!("  allowed hosts:      {}", list(&info.allowed_hosts));
}

/// The allowance flags, checked here for a clear error before anything is sent.
fn allowance(args: &SetArgs) -> anyhow::Result<SecretAllowance> {
    let allowance = SecretAllowance {
        namespaces: args.allow_namespace.clone(),
        policies: args.allow_policy.clone(),
        hosts: args.allow_host.clone(),
    };
    Allowance::parse(&allowance).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.replace("allowedNamespaces", "--allow-namespace")
                .replace("allowedPolicies", "--allow-policy")
                .replace("allowedHosts", "--allow-host")
        )
    })?;
    Ok(allowance)
}

fn set(args: &SetArgs) -> anyhow::Result<()> {
    let allowance = allowance(args)?;
    let who = !allowance.namespaces.is_empty() || !allowance.policies.is_empty();
    if !who || allowance.hosts.is_empty() {
        eprintln!(
            "note: no policy can use secret {} until it has --allow-namespace or --allow-policy \
             AND --allow-host (set it again with them)",
            args.name
        );
    }
    let body = serde_json::to_vec(&SecretWrite {
        data: collect(args)?,
        allowed_namespaces: allowance.namespaces,
        allowed_policies: allowance.policies,
        allowed_hosts: allowance.hosts,
    })
    .context("cannot encode the secret")?;
    let answer = args.remote.call(
        Method::PUT,
        &format!("/v1/secrets/{}", args.name),
        Some("application/json"),
        Bytes::from(body),
    )?;
    let info: SecretInfo =
        serde_json::from_slice(&answer.body).context("the gateway answered unexpected JSON")?;
    show(&info);
    Ok(())
}

pub fn run(cmd: SecretCommand) -> ExitCode {
    let (name, result) = match cmd {
        SecretCommand::Set(args) => ("secret set", set(&args)),
        SecretCommand::List(remote) => (
            "secret list",
            remote
                .call(Method::GET, "/v1/secrets", None, Bytes::new())
                .and_then(|a| {
                    let list: SecretList = serde_json::from_slice(&a.body)
                        .context("the gateway answered unexpected JSON")?;
                    for s in &list.secrets {
                        show(s);
                    }
                    Ok(())
                }),
        ),
        SecretCommand::Delete { name, remote } => (
            "secret delete",
            remote
                .call(
                    Method::DELETE,
                    &format!("/v1/secrets/{name}"),
                    None,
                    Bytes::new(),
                )
                .map(|_| println!("deleted secret {name}")),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(name, &e),
    }
}
