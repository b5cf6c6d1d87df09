//! Options and helpers shared by CLI commands that talk to a gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::Method;
use palisade_gateway::client::{Answer, GatewayClient};

#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Gateway base URL, e.g. https://gateway:8443.
    #[arg(long, env = "PALISADE_GATEWAY")]
    pub gateway: String,
    /// File holding the bearer token to present (admin token or sandbox JWT).
    #[arg(long, env = "PALISADE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the gateway's certificate, for https.
    #[arg(long, env = "PALISADE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl Remote {
    pub fn client(&self) -> anyhow::Result<GatewayClient> {
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read token file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        GatewayClient::new(&self.gateway, token, self.ca_file.as_deref())
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
        let client = self.client()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let answer = rt.block_on(client.send(method, path, content_type, body))?;
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
