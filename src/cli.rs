//! The command line: every subcommand and option, with the help text users
//! read. Completions and the man page are generated from these definitions.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::time::parse_duration;

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

    /// Log line format: text or json.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = crate::logging::LogFormat::Text,
        hide_possible_values = true
    )]
    pub log_format: crate::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive webhooks over HTTP and store each delivery.
    ///
    /// Logs go to standard error. RUST_LOG sets the level (default info;
    /// debug adds one line per request, without its query string), and
    /// --log-format json writes each line as one JSON object with time,
    /// level, target and message.
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
    /// Print the man page (roff) to standard output, or write one page per
    /// command with --dir.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write dsevents.1 and one page per subcommand (dsevents-serve.1,
    /// dsevents-query-bounces.1, ...) into DIR, creating it if needed,
    /// instead of printing the top-level page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Writes the completion script for `shell` to standard output.
///
/// The script is rendered into memory first because clap_complete panics
/// when its writer fails; a closed standard output then ends quietly.
pub fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;

    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "dsevents", &mut script);
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

/// Runs `dsevents man`: prints the top-level page, or writes every page to
/// `--dir`. A closed standard output, as with `| head -1`, ends it quietly
/// and successfully.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    // Without this, clap adds a `help` subcommand that would get a page.
    let mut command = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    // Building names each subcommand for its page: dsevents-query-bounces.
    command.build();

    let Some(dir) = args.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        let mut stdout = io::stdout().lock();
        return match stdout.write_all(&page).and_then(|()| stdout.flush()) {
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        };
    };

    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let mut written = Vec::new();
    write_man_pages(command, &dir, &mut written)?;
    for path in written {
        crate::output::print_line(format_args!("wrote {}", path.display()))?;
    }
    Ok(())
}

/// Writes the page of `command` and of each of its subcommands, at any
/// depth, into `dir`, and appends each path to `written`.
fn write_man_pages(command: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let subcommands: Vec<clap::Command> =
        command.get_subcommands().filter(|subcommand| !subcommand.is_hide_set()).cloned().collect();

    let page = clap_mangen::Man::new(command);
    let path = dir.join(page.get_filename());
    let mut text = Vec::new();
    page.render(&mut text)?;
    std::fs::write(&path, text).with_context(|| format!("cannot write man page {}", path.display()))?;
    written.push(path);

    for subcommand in subcommands {
        write_man_pages(subcommand, dir, written)?;
    }
    Ok(())
}

/// Reads a duration option such as `--silence 24h` that must be longer
/// than zero. `option` names it in the error.
pub fn parse_positive_duration(option: &str, text: &str) -> Result<chrono::Duration, UsageError> {
    let not_positive =
        || UsageError(format!("invalid {option} '{text}': the duration must be positive, such as 24h or 90d"));
    let trimmed = text.trim();
    // A bare 0 has no unit, so parse_duration would blame the unit.
    if trimmed.starts_with('-') || (!trimmed.is_empty() && trimmed.bytes().all(|byte| byte == b'0')) {
        return Err(not_positive());
    }
    let duration = parse_duration(text).map_err(|message| UsageError(format!("{option}: {message}")))?;
    if duration <= chrono::Duration::zero() {
        return Err(not_positive());
    }
    Ok(duration)
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
