//! Placeholder, replaced by the query commands.
use clap::Subcommand;
#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// Placeholder.
    Bounces,
}
pub fn run(_command: QueryCommand) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
