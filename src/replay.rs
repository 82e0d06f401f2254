//! `dsevents replay`: rebuilds normalized rows from the raw bodies with the
//! current parsers, for example after an upgrade that learned a new kind or
//! fixed a parser.
//!
//! Works on a live database: deliveries are processed in short write
//! transactions of `BATCH` rows, so `serve` keeps committing in between.

use clap::Args;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::catalog;
use crate::cli::{DbArg, UsageError};
use crate::normalize::Value;
use crate::output::print_line;
use crate::progress;
use crate::store::{self, Delivery, Parsed};

/// Deliveries re-normalized per write transaction.
const BATCH: usize = 500;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub db: DbArg,

    /// Only deliveries of this kind slug.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,

    /// Only deliveries that were not normalized (quarantined or unknown
    /// kind). This is the default unless --all is given.
    #[arg(long, conflicts_with = "all")]
    pub quarantined: bool,

    /// Every delivery, including those already stored.
    #[arg(long)]
    pub all: bool,
}

/// Counts of what a replay changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub examined: u64,
    pub changed: u64,
    pub now_stored: u64,
    pub now_quarantined: u64,
    pub skipped_without_body: u64,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if let Some(kind) = &args.kind {
        if catalog::by_slug(kind).is_none() {
            return Err(UsageError(format!("unknown kind '{kind}'; the known kinds are {}", catalog::slug_list())).into());
        }
    }
    let mut connection = store::open_existing(&args.db.db)?;
    let summary = replay(&mut connection, args.kind.as_deref(), args.all)?;
    print_line(format_args!(
        "replayed {} deliveries: {} changed ({} now stored, {} now quarantined), {} unchanged, {} skipped because their body was removed",
        summary.examined,
        summary.changed,
        summary.now_stored,
        summary.now_quarantined,
        summary.examined - summary.changed - summary.skipped_without_body,
        summary.skipped_without_body,
    ))?;
    Ok(())
}

/// Re-normalizes the selected deliveries. Running it twice changes nothing
/// the second time.
pub fn replay(connection: &mut Connection, kind: Option<&str>, all: bool) -> anyhow::Result<ReplaySummary> {
    let selection = "(?1 IS NULL OR kind = ?1) AND (?2 OR outcome <> 'stored')";
    let total: u64 = connection.query_row(
        &format!("SELECT count(*) FROM deliveries WHERE {selection}"),
        params![kind, all],
        |row| row.get(0),
    )?;
    let bar = progress::bar(total, "replay");
    let mut summary = ReplaySummary::default();
    let mut after_id = 0i64;

    loop {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let batch: Vec<(i64, String, String, Option<Vec<u8>>, String, Option<String>, Option<String>)> = {
            let mut statement = tx.prepare_cached(&format!(
                "SELECT id, received_at, kind, body, outcome, error, dsid FROM deliveries
                  WHERE id > ?3 AND {selection} ORDER BY id LIMIT ?4"
            ))?;
            let rows = statement.query_map(params![kind, all, after_id, BATCH as i64], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let Some(last) = batch.last() else {
            break;
        };
        after_id = last.0;

        for (id, received_at, kind_slug, body, outcome, error, dsid) in batch {
            summary.examined += 1;
            bar.inc(1);
            let Some(body) = body else {
                summary.skipped_without_body += 1;
                continue;
            };
            // `import --kind-field` quarantines a body that lacks the member
            // and names its kind "unknown". Replay cannot find the kind
            // either, and keeps the reason that import gave.
            if outcome == "quarantined" && catalog::by_slug(&kind_slug).is_none() {
                continue;
            }
            let fresh = Delivery::new(&kind_slug, body, None, received_at.clone());
            let fresh_dsid = fresh.dsid();
            let mut changed = fresh.outcome() != outcome || fresh.reason() != error || fresh_dsid != dsid;

            match &fresh.parsed {
                Parsed::Stored(known, row) => {
                    if !row_matches(&tx, known, id, &row.values)? {
                        store::insert_row(&tx, known, id, &received_at, row)?;
                        changed = true;
                    }
                }
                Parsed::Quarantined(_) | Parsed::UnknownKind => {
                    if let Some(known) = catalog::by_slug(&kind_slug) {
                        let removed = tx.execute(&format!("DELETE FROM {} WHERE delivery_id = ?1", known.table), [id])?;
                        changed |= removed > 0;
                    }
                }
            }
            if !changed {
                continue;
            }

            tx.execute(
                "UPDATE deliveries SET outcome = ?2, error = ?3, dsid = ?4 WHERE id = ?1",
                params![id, fresh.outcome(), fresh.reason(), fresh_dsid],
            )?;
            summary.changed += 1;
            if fresh.outcome() != outcome {
                match fresh.parsed {
                    Parsed::Stored(..) => summary.now_stored += 1,
                    _ => summary.now_quarantined += 1,
                }
            }
        }
        tx.commit()?;
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// Returns true if and only if delivery `id` already has a row in the kind's
/// table holding exactly `values`.
fn row_matches(connection: &Connection, kind: &catalog::Kind, id: i64, values: &[Value]) -> rusqlite::Result<bool> {
    let sql = format!("SELECT {} FROM {} WHERE delivery_id = ?1", kind.columns().join(", "), kind.table);
    let existing: Option<Vec<SqlValue>> = connection
        .prepare_cached(&sql)?
        .query_row([id], |row| (0..values.len()).map(|index| row.get::<_, SqlValue>(index)).collect())
        .optional()?;
    let Some(existing) = existing else {
        return Ok(false);
    };
    Ok(existing.iter().zip(values).all(|(old, new)| match (old, new) {
        (SqlValue::Null, Value::Null) => true,
        (SqlValue::Integer(old), Value::Integer(new)) => old == new,
        (SqlValue::Text(old), Value::Text(new)) => old == new,
        _ => false,
    }))
}
