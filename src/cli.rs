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

    /// Log line format on standard error; RUST_LOG sets the level (default
    /// info, debug adds one line per request).
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive webhooks over HTTP and store each delivery.
    Serve(crate::server::ServeArgs),
    /// Report on stored events.
    #[command(subcommand)]
    Query(crate::query::QueryCommand),
    /// Rebuild normalized rows from the raw bodies with the current parsers.
    Replay(crate::replay::ReplayArgs),
    /// Add deliveries from NDJSON files or JSON arrays.
    Import(crate::import::ImportArgs),
    /// Write every row of one kind as CSV, JSON or NDJSON.
    Export(crate::export::ExportArgs),
    /// Write a consistent copy of the database, also while serve runs.
    Backup(crate::backup::BackupArgs),
    /// Remove old raw bodies that were normalized, keeping their rows.
    Prune(crate::prune::PruneArgs),
    /// Erase one person from every table and raw body (GDPR, CCPA).
    Forget(crate::forget::ForgetArgs),
    /// Show counts per kind, quarantined deliveries and warnings.
    Status(crate::status::StatusArgs),
    /// Print the webhook URL to paste into DailyStory for each event kind.
    Urls(crate::urls::UrlsArgs),
    /// Post the embedded sample deliveries to a running server, as DailyStory would.
    Simulate(crate::simulate::SimulateArgs),
    /// Print a shell completion script to standard output.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output.
    Man,
}

/// Writes the completion script for `shell` to standard output.
pub fn print_completions(shell: clap_complete::Shell) {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "dsevents", &mut std::io::stdout());
}

/// Writes the man page to standard output.
pub fn print_man() -> std::io::Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(command).render(&mut std::io::stdout())
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
