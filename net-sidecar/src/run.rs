//! Placeholder until the data plane lands (owned by another helper).
#[derive(Debug, clap::Args)]
pub struct RunArgs {}

pub fn main(_: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
