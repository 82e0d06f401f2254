//! The command line: every subcommand and option, with the help text users
//! read. Completions and the man page are generated from these definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dsevents",
    version,
    about = "Receive DailyStory webhooks, keep every delivery in SQLite, and report on them",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive webhooks over HTTP and store each delivery.
    Serve(crate::server::ServeArgs),
    /// Report on stored events.
    #[command(subcommand)]
    Query(crate::query::QueryCommand),
    /// Print the webhook URL to paste into DailyStory for each event kind.
    Urls(crate::urls::UrlsArgs),
    /// Post the embedded sample deliveries to a running server, as DailyStory would.
    Simulate(crate::simulate::SimulateArgs),
}

/// The `--db` option every command takes.
#[derive(Debug, Clone, Args)]
pub struct DbArg {
    /// SQLite database file.
    #[arg(long, env = "DSEVENTS_DB", default_value = "dsevents.db", value_name = "PATH")]
    pub db: PathBuf,
}

/// An invalid option value found after clap's parsing, such as a `--since`
/// that is not a time. `main` exits 2 for it, as clap does for its own.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
