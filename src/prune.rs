//! `dsevents prune`: removes old raw bodies that were normalized, keeping
//! their delivery rows, normalized rows and duplicate fingerprints.

use clap::Args;
use rusqlite::{params, Connection, TransactionBehavior};

use crate::cli::{parse_positive_duration, DbArg};
use crate::output::print_line;
use crate::progress;
use crate::time::{format_utc, now_text};

/// Bodies removed per write transaction, so `serve` can commit in between.
const BATCH: i64 = 1000;

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub db: DbArg,

    /// Remove raw bodies of deliveries received longer ago than this
    /// (such as 90d, 12w or 720h).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub raw_older_than: String,

    /// Also remove bodies of quarantined and unknown-kind deliveries, which
    /// are otherwise kept whole so that `replay` can read them later.
    #[arg(long)]
    pub include_quarantined: bool,

    /// Report what would be removed without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Bodies removed (or that would be) and their size in bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PruneSummary {
    pub bodies: u64,
    pub bytes: u64,
}

pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    let age = parse_positive_duration("--raw-older-than", &args.raw_older_than)?;
    let cutoff = format_utc(chrono::Utc::now() - age);
    let mut connection = crate::store::open_existing(&args.db.db)?;
    let summary = prune(&mut connection, &cutoff, args.include_quarantined, args.dry_run)?;
    let verb = if args.dry_run { "would remove" } else { "removed" };
    print_line(format_args!(
        "{verb} {} raw bodies received before {cutoff}, {} bytes; delivery and normalized rows are kept",
        summary.bodies, summary.bytes
    ))?;
    if !args.dry_run && summary.bodies > 0 {
        print_line(format_args!(
            "SQLite reuses the freed pages for new deliveries; run `sqlite3 FILE 'VACUUM'` while serve is stopped to shrink the file"
        ))?;
    }
    Ok(())
}

/// Removes the bodies of deliveries received before `cutoff` (stored text).
pub fn prune(connection: &mut Connection, cutoff: &str, include_quarantined: bool, dry_run: bool) -> anyhow::Result<PruneSummary> {
    let selection = "body IS NOT NULL AND received_at < ?1 AND (?2 OR outcome = 'stored')";
    let (bodies, bytes): (u64, u64) = connection.query_row(
        &format!("SELECT count(*), coalesce(sum(length(body)), 0) FROM deliveries WHERE {selection}"),
        params![cutoff, include_quarantined],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let summary = PruneSummary { bodies, bytes };
    if dry_run || bodies == 0 {
        return Ok(summary);
    }

    let bar = progress::bar(bodies, "prune");
    let removed_at = now_text();
    loop {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            &format!(
                "UPDATE deliveries SET body = NULL, body_removed_at = ?3, body_removed_by = 'prune'
                  WHERE id IN (SELECT id FROM deliveries WHERE {selection} LIMIT ?4)"
            ),
            params![cutoff, include_quarantined, removed_at, BATCH],
        )?;
        tx.commit()?;
        bar.inc(changed as u64);
        if changed == 0 {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}
