//! Options and helpers shared by CLI commands that talk to a gateway.
//!
//! Where the gateway is: `--gateway`/`PALISADE_GATEWAY` (with
//! `--token-file`, `--ca-file`), else the CLI context `palisade up` writes
//! ([`context_path`]); flags given beside a context override its fields.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::Method;
use palisade_gateway::client::{Answer, GatewayClient};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Gateway base URL, e.g. https://gateway:8443 [default: from the CLI
    /// context `palisade up` writes].
    #[arg(long, env = "PALISADE_GATEWAY")]
    pub gateway: Option<String>,
    /// File holding the bearer token to present (admin token or sandbox JWT).
    #[arg(long, env = "PALISADE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the gateway's certificate, for https.
    #[arg(long, env = "PALISADE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// What `palisade up` records so that the CLI needs no flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CliContext {
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// `$PALISADE_CONTEXT`, else `$XDG_CONFIG_HOME/palisade/context.json`, else
/// `$HOME/.config/palisade/context.json`.
pub fn context_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_CONTEXT").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|p| !p.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(config.join("palisade").join("context.json"))
}

impl CliContext {
    pub fn load(path: &Path) -> anyhow::Result<Option<CliContext>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!("the CLI context {} is invalid; delete it", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read the CLI context {}", path.display()))
            }
        }
    }
}

impl Remote {
    /// Flags over the CLI context.
    pub fn resolved(&self) -> anyhow::Result<Remote> {
        if self.gateway.is_some() {
            return Ok(self.clone());
        }
        let path = context_path();
        let ctx = match &path {
            Some(p) => CliContext::load(p)?,
            None => None,
        };
        let Some(ctx) = ctx else {
            anyhow::bail!(
                "no gateway given: pass --gateway URL (or set PALISADE_GATEWAY), or start one with \
                 `palisade up`, which writes a CLI context{}",
                path.map(|p| format!(" to {}", p.display()))
                    .unwrap_or_default()
            );
        };
        Ok(Remote {
            gateway: Some(ctx.gateway),
            token_file: self.token_file.clone().or(ctx.token_file),
            ca_file: self.ca_file.clone().or(ctx.ca_file),
        })
    }

    pub fn client(&self) -> anyhow::Result<GatewayClient> {
        let this = self.resolved()?;
        let Some(gateway) = this.gateway.as_deref() else {
            anyhow::bail!("no gateway given: pass --gateway URL");
        };
        let token = match &this.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read token file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        GatewayClient::new(gateway, token, this.ca_file.as_deref())
    }

    /// Send one request and return the answer; non-2xx becomes an error
    /// carrying the gateway's JSON reason.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let resolved = self.resolved()?;
        let client = resolved.client()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let answer = rt
            .block_on(client.send(method, path, content_type, body))
            .with_context(|| {
                format!(
                    "no answer from the gateway at {}; is it running (`palisade up`)?",
                    resolved.gateway.as_deref().unwrap_or("?")
                )
            })?;
        if !answer.status.is_success() {
            let reason = serde_json::from_slice::<palisade_api::ErrorBody>(&answer.body)
                .map(|e| format!("{}: {}", e.error, e.reason))
                .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).into_owned());
            anyhow::bail!("the gateway answered {}: {reason}", answer.status);
        }
        Ok(answer)
    }
}

/// Print a command failure the same way everywhere.
pub fn fail(command: &str, err: &anyhow::Error) -> ExitCode {
    eprintln!("palisade {command}: {err:#}");
    ExitCode::FAILURE
}

/// Pretty-print a JSON answer.
pub fn print_json(answer: &Answer) -> anyhow::Result<()> {
    let value = answer.json()?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
