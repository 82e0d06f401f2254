//! `dsevents export`: every row of one kind, normalized or raw, streamed
//! out as CSV, JSON or NDJSON.

use std::io::{self, BufWriter, Write};

use anyhow::Context;
use clap::{Args, ValueEnum};
use rusqlite::params;

use crate::catalog;
use crate::cli::{DbArg, UsageError};
use crate::output::{self, Format, RowWriter};
use crate::query::{TimeArgs, TimeWindow};
use crate::store;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Kind slug to export, such as email-bounced. With --raw, any slug
    /// that deliveries were received under, also an unknown one.
    #[arg(long, value_name = "KIND")]
    pub kind: String,

    /// Export the raw deliveries (id, time, outcome, error, duplicate_of and
    /// the body as text) instead of the normalized rows.
    #[arg(long)]
    pub raw: bool,

    #[command(flatten)]
    pub db: DbArg,

    #[command(flatten)]
    pub time: TimeArgs,

    /// Output format. Every format streams rows as they are read, so an
    /// export of any size uses little memory.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
}

/// The formats `export` writes. The table format of `query` is left out
/// because it keeps every row in memory to size its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl ExportFormat {
    fn output_format(self) -> Format {
        match self {
            ExportFormat::Csv => Format::Csv,
            ExportFormat::Json => Format::Json,
            ExportFormat::Ndjson => Format::Ndjson,
        }
    }
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    match export(args) {
        Err(error) if output::is_broken_pipe(&error) => Ok(()),
        result => result,
    }
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let window = TimeWindow::parse(&args.time)?;
    let known = catalog::by_slug(&args.kind);
    if known.is_none() && !args.raw {
        return Err(UsageError(format!(
            "unknown kind '{}'; the known kinds are {} (use --raw to export deliveries of an unknown kind)",
            args.kind,
            catalog::slug_list()
        ))
        .into());
    }
    let connection = store::open_for_reading(&args.db.db)?;
    // Table and column names come from the catalogue, never from input.
    let sql = match known {
        Some(kind) if !args.raw => format!(
            "SELECT t.delivery_id, t.received_at, {}, d.duplicate_of
               FROM {} t JOIN deliveries d ON d.id = t.delivery_id
              WHERE (?1 IS NULL OR t.received_at >= ?1) AND (?2 IS NULL OR t.received_at < ?2)
              ORDER BY t.delivery_id",
            kind.columns().iter().map(|column| format!("t.{column}")).collect::<Vec<_>>().join(", "),
            kind.table
        ),
        _ => "SELECT id AS delivery_id, received_at, kind, outcome, error, duplicate_of, content_type,
                     body_bytes, CAST(body AS TEXT) AS body
                FROM deliveries
               WHERE kind = ?3 AND (?1 IS NULL OR received_at >= ?1) AND (?2 IS NULL OR received_at < ?2)
               ORDER BY id"
            .to_string(),
    };

    let failed = || format!("export failed on database {}", args.db.db.display());
    let mut statement = connection.prepare(&sql).with_context(failed)?;
    let columns: Vec<String> = statement.column_names().into_iter().map(String::from).collect();
    let column_refs: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut writer = RowWriter::new(args.format.output_format(), &column_refs, BufWriter::new(io::stdout().lock()))?;

    let parameter_count = statement.parameter_count();
    let mut rows = if parameter_count == 3 {
        statement.query(params![window.since, window.until, args.kind])
    } else {
        statement.query(params![window.since, window.until])
    }
    .with_context(failed)?;
    while let Some(row) = rows.next().with_context(failed)? {
        let values = (0..columns.len()).map(|index| row.get_ref(index)).collect::<Result<Vec<_>, _>>()?;
        writer.write_row(&values)?;
    }
    writer.finish()?;
    io::stdout().flush()?;
    Ok(())
}
