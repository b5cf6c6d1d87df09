//! `palisade keys list|rotate`: the gateway's signing keys (admin token needed).

use std::process::ExitCode;

use bytes::Bytes;
use clap::Subcommand;
use http::Method;

use super::remote::{Remote, fail, print_json};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List signing and verification keys.
    List(Remote),
    /// Make a new key the signer now; old tokens keep verifying until they expire.
    Rotate(Remote),
}

pub fn run(cmd: KeysCommand) -> ExitCode {
    let (name, result) = match &cmd {
        KeysCommand::List(r) => (
            "keys list",
            r.call(Method::GET, "/v1/keys", None, Bytes::new()),
        ),
        KeysCommand::Rotate(r) => (
            "keys rotate",
            r.call(Method::POST, "/v1/keys:rotate", None, Bytes::new()),
        ),
    };
    match result.and_then(|a| print_json(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(name, &e),
    }
}
