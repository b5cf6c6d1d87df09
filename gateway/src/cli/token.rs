//! `palisade token inspect`: show a JWT's header, claims and expiry, and a
//! fingerprint of it — never the token itself. Does not verify the signature
//! (that needs the gateway's JWKS; see docs/gateway.md).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Subcommand;

use super::remote::fail;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Decode a token from FILE (or `-` for standard input).
    Inspect {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn segment(part: &str, what: &str) -> anyhow::Result<serde_json::Value> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .with_context(|| format!("the {what} is not base64url"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("the {what} is not JSON"))
}

/// The report `inspect` prints, as JSON.
pub fn inspect(token: &str, now: u64) -> anyhow::Result<serde_json::Value> {
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        bail!("not a JWT (expected three dot-separated parts)");
    }
    let header = segment(parts[0], "header")?;
    let claims = segment(parts[1], "claims")?;
    let exp = claims.get("exp").and_then(serde_json::Value::as_u64);
    let status = match exp {
        Some(exp) if exp <= now => format!("expired {}s ago", now - exp),
        Some(exp) => format!("valid for {}s more (signature not checked)", exp - now),
        None => "no exp claim".to_owned(),
    };
    Ok(serde_json::json!({
        "fingerprint": palisade_gateway::tokens::fingerprint(token),
        "kid": header.get("kid"),
        "header": header,
        "claims": claims,
        "expiry": status,
    }))
}

pub fn run(cmd: TokenCommand) -> ExitCode {
    let TokenCommand::Inspect { file } = cmd;
    let result = (|| -> anyhow::Result<()> {
        let mut text = String::new();
        if file.as_os_str() == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
        } else {
            text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
        }
        let report = inspect(&text, palisade_gateway::fsutil::now())?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("token inspect", &e),
    }
}
