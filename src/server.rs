//! The `serve` command.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}
pub fn run(_args: ServeArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
