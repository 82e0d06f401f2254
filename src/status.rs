//! `dsevents status`: what the database contains per kind, what could not be
//! normalized, and warnings an operator must act on, above all a kind that
//! has gone silent (DailyStory may have paused its subscription).

use std::fmt::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use crate::catalog::{self, KINDS};
use crate::cli::{parse_positive_duration, DbArg};
use crate::output::print_line;
use crate::time::format_utc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DbArg,

    /// Warn when a kind that has received deliveries has been silent this
    /// long (s, m, h, d or w).
    #[arg(long, default_value = "24h", value_name = "DURATION", allow_hyphen_values = true)]
    pub silence: String,

    /// Exit 1 when there is any warning, for cron jobs and monitoring.
    #[arg(long)]
    pub check: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
}

#[derive(Debug, Serialize)]
pub struct KindStatus {
    pub kind: String,
    pub name: String,
    pub count: i64,
    pub first_received_at: Option<String>,
    pub last_received_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NotStored {
    pub count: i64,
    pub latest_id: Option<i64>,
    pub latest_received_at: Option<String>,
    pub latest_reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub database: String,
    pub database_bytes: u64,
    pub wal_bytes: u64,
    pub schema_version: i64,
    pub deliveries: i64,
    pub kinds: Vec<KindStatus>,
    pub quarantined: NotStored,
    pub unknown_kind: NotStored,
    pub duplicates: i64,
    pub warnings: Vec<String>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let silence = parse_positive_duration("--silence", &args.silence)?;
    let connection = crate::store::open_for_reading(&args.db.db)?;
    let status = read_status(&connection, &args.db.db, silence, Utc::now())?;

    match args.format {
        StatusFormat::Json => print_line(format_args!("{}", serde_json::to_string_pretty(&status)?))?,
        StatusFormat::Text => print_line(format_args!("{}", format_text(&status)))?,
    }
    if args.check && !status.warnings.is_empty() {
        return Err(CheckFailed(status.warnings.len()).into());
    }
    Ok(())
}

/// `--check` found warnings; they are already printed.
#[derive(Debug)]
pub struct CheckFailed(pub usize);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "status check failed with {} warnings", self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// Reads the status of the database at `path` as of `now`.
pub fn read_status(connection: &Connection, path: &Path, silence: chrono::Duration, now: DateTime<Utc>) -> anyhow::Result<Status> {
    let mut kinds = Vec::new();
    {
        let mut statement = connection.prepare(
            "SELECT kind, count(*), min(received_at), max(received_at) FROM deliveries GROUP BY kind ORDER BY kind",
        )?;
        let mut rows = statement.query([])?;
        let mut seen = Vec::new();
        while let Some(row) = rows.next()? {
            seen.push(KindStatus {
                kind: row.get(0)?,
                name: String::new(),
                count: row.get(1)?,
                first_received_at: row.get(2)?,
                last_received_at: row.get(3)?,
            });
        }
        // Every known kind is listed, also those never received, in
        // catalogue order; unknown slugs follow.
        for kind in KINDS {
            let found = seen.iter().position(|status| status.kind == kind.slug);
            let mut status = found.map(|index| seen.remove(index)).unwrap_or(KindStatus {
                kind: kind.slug.to_string(),
                name: String::new(),
                count: 0,
                first_received_at: None,
                last_received_at: None,
            });
            status.name = kind.name.to_string();
            kinds.push(status);
        }
        kinds.extend(seen);
    }

    let quarantined = not_stored(connection, "quarantined")?;
    let unknown_kind = not_stored(connection, "unknown_kind")?;
    let duplicates: i64 = connection.query_row("SELECT count(*) FROM deliveries WHERE duplicate_of IS NOT NULL", [], |row| row.get(0))?;
    let schema_version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let deliveries = kinds.iter().map(|kind| kind.count).sum();

    let file_size = |path: &Path| std::fs::metadata(path).map(|metadata| metadata.len()).unwrap_or(0);
    let mut wal_path = path.as_os_str().to_owned();
    wal_path.push("-wal");

    let mut warnings = Vec::new();
    let cutoff = format_utc(now - silence);
    for kind in &kinds {
        let Some(last) = &kind.last_received_at else {
            continue;
        };
        if catalog::by_slug(&kind.kind).is_some() && *last < cutoff {
            warnings.push(format!(
                "no {} deliveries since {last} (silent longer than {}); DailyStory pauses a subscription after 10 failed \
                 deliveries in a row: check its failure log and re-activate it under Account Settings > Developer > Webhooks",
                kind.kind,
                describe_duration(silence)
            ));
        }
    }
    // Only recent quarantines warn, so one old unreadable body does not fail
    // every later check.
    if quarantined.latest_received_at.as_ref().is_some_and(|latest| *latest >= cutoff) {
        warnings.push(format!(
            "deliveries were quarantined within the last {} ({} in all; latest reason: {}); fix the cause, then run `dsevents replay`",
            describe_duration(silence),
            quarantined.count,
            quarantined.latest_reason.as_deref().unwrap_or("none recorded")
        ));
    }

    Ok(Status {
        database: path.display().to_string(),
        database_bytes: file_size(path),
        wal_bytes: file_size(Path::new(&wal_path)),
        schema_version,
        deliveries,
        kinds,
        quarantined,
        unknown_kind,
        duplicates,
        warnings,
    })
}

/// Counts the deliveries of one outcome other than 'stored' and finds the
/// latest. `outcome` is one of those constants, written into the SQL so
/// that SQLite can use the partial index deliveries_not_stored. With a
/// bound parameter it read the whole table.
fn not_stored(connection: &Connection, outcome: &'static str) -> rusqlite::Result<NotStored> {
    let condition = format!("outcome = '{outcome}' AND outcome <> 'stored'");
    let count: i64 =
        connection.query_row(&format!("SELECT count(*) FROM deliveries WHERE {condition}"), [], |row| row.get(0))?;
    let latest: Option<(i64, String, Option<String>)> = connection
        .query_row(
            &format!("SELECT id, received_at, error FROM deliveries WHERE {condition} ORDER BY id DESC LIMIT 1"),
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    Ok(NotStored {
        count,
        latest_id: latest.as_ref().map(|latest| latest.0),
        latest_received_at: latest.as_ref().map(|latest| latest.1.clone()),
        latest_reason: latest.and_then(|latest| latest.2),
    })
}

fn describe_duration(duration: chrono::Duration) -> String {
    let seconds = duration.num_seconds();
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Formats the status for people: a summary line, a table of kinds, then
/// what was not stored and the warnings.
fn format_text(status: &Status) -> String {
    let mut text = String::new();
    // fmt::Write for String never returns an error.
    let _ = writeln!(
        text,
        "database {} ({} bytes, WAL {} bytes), schema version {}, {} deliveries\n",
        status.database, status.database_bytes, status.wal_bytes, status.schema_version, status.deliveries
    );
    // The last column is padded too, so trim each line's end.
    let header = format!("{:<24} {:>10}  {:<24}  {:<24}", "KIND", "COUNT", "FIRST RECEIVED", "LAST RECEIVED");
    let _ = writeln!(text, "{}", header.trim_end());
    for kind in &status.kinds {
        let line = format!(
            "{:<24} {:>10}  {:<24}  {:<24}",
            kind.kind,
            kind.count,
            kind.first_received_at.as_deref().unwrap_or("-"),
            kind.last_received_at.as_deref().unwrap_or("-")
        );
        let _ = writeln!(text, "{}", line.trim_end());
    }
    text.push('\n');
    for (label, not_stored) in [("quarantined", &status.quarantined), ("unknown kind", &status.unknown_kind)] {
        let _ = match (&not_stored.latest_id, &not_stored.latest_reason) {
            (Some(id), reason) => writeln!(
                text,
                "{label}: {} (latest: delivery {id} at {}: {})",
                not_stored.count,
                not_stored.latest_received_at.as_deref().unwrap_or("-"),
                reason.as_deref().unwrap_or("no reason recorded")
            ),
            (None, _) => writeln!(text, "{label}: 0"),
        };
    }
    let _ = writeln!(text, "duplicates: {}", status.duplicates);
    if status.warnings.is_empty() {
        text.push_str("warnings: none");
    } else {
        let warnings: Vec<String> = status.warnings.iter().map(|warning| format!("warning: {warning}")).collect();
        text.push_str(&warnings.join("\n"));
    }
    text
}
