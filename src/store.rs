//! The SQLite store: opening a database with the settings every command
//! relies on, applying `schema.sql`, and writing one delivery.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use rusqlite::{params, Connection, OpenFlags, Transaction};
use sha2::{Digest, Sha256};

use crate::catalog::{self, Kind};
use crate::normalize::{self, Row};

/// The schema, applied when a database's user_version is below `SCHEMA_VERSION`.
pub const SCHEMA_SQL: &str = include_str!("../schema.sql");
/// The `PRAGMA user_version` that `schema.sql` sets.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a connection waits for another writer's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements each connection keeps: one insert per kind plus the
/// few shared ones. rusqlite 0.32's default of 16 is fewer than the kinds,
/// so a mix of kinds evicted and parsed the inserts again all the time.
const STATEMENT_CACHE_CAPACITY: usize = catalog::KINDS.len() + 16;

/// Opens or creates the database at `path` for `serve`, and brings its
/// schema up to date.
pub fn open_or_create(path: &Path) -> anyhow::Result<Connection> {
    if path.is_dir() {
        bail!("--db {} is a directory; give the path of the database file", path.display());
    }
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "the directory of database {} does not exist; create it or pass another --db path",
                path.display()
            );
        }
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    prepare_connection(&connection, path, true)?;
    Ok(connection)
}

/// Opens an existing database for a command that reads or edits it. A
/// missing file is an error naming the path, never a new empty database.
pub fn open_existing(path: &Path) -> anyhow::Result<Connection> {
    if path.is_dir() {
        bail!("--db {} is a directory; give the path of the database file", path.display());
    }
    if !path.exists() {
        bail!(
            "database {} not found; pass --db PATH (or set DSEVENTS_DB) to the file `dsevents serve` writes",
            path.display()
        );
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    prepare_connection(&connection, path, false)?;
    Ok(connection)
}

/// Opens an existing database for reading only (reports, status, export),
/// so a user who may read but not write the file can still run them. A file
/// whose schema is older than this build is opened read-write instead, to
/// bring it up to date.
pub fn open_for_reading(path: &Path) -> anyhow::Result<Connection> {
    if !path.is_file() {
        return open_existing(path);
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .with_context(|| format!("cannot read database {}: is it a SQLite file?", path.display()))?;
    if version == SCHEMA_VERSION {
        return Ok(connection);
    }
    check_schema(&connection, path, false)?;
    drop(connection);
    open_existing(path)
}

/// Fails unless the file is a dsevents database, or (when `may_create`) an
/// empty one that dsevents may set up. Runs before anything is written, so
/// another program's SQLite file given by mistake is left untouched.
fn check_schema(connection: &Connection, path: &Path, may_create: bool) -> anyhow::Result<()> {
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .with_context(|| format!("cannot read database {}: is it a SQLite file?", path.display()))?;
    let (tables, has_deliveries): (i64, bool) = connection.query_row(
        "SELECT count(*), coalesce(sum(name = 'deliveries'), 0) > 0 FROM sqlite_master
          WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    if version > 0 || has_deliveries || (tables == 0 && may_create) {
        return Ok(());
    }
    if tables == 0 {
        bail!(
            "database {} is empty, not a dsevents database; pass --db PATH to the file `dsevents serve` writes",
            path.display()
        );
    }
    bail!(
        "{} is a SQLite database of another program (it has {tables} tables and no deliveries table); \
         pass --db PATH to the file `dsevents serve` writes, or a new path",
        path.display()
    )
}

fn prepare_connection(connection: &Connection, path: &Path, may_create: bool) -> anyhow::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    check_schema(connection, path, may_create)?;
    // WAL lets readers (queries, sqlite3, Datasette) run beside the writer.
    // synchronous=FULL syncs the WAL on every commit, so a commit that has
    // returned survives power loss; `serve` responds only after that commit.
    let mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .with_context(|| format!("cannot use database {}: is it a SQLite file?", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("database {} cannot use WAL journaling (got {mode})", path.display());
    }
    // Checkpoint policy: SQLite's automatic checkpoint (PASSIVE, run after
    // a commit that leaves 1000 or more pages in the WAL) copies the WAL
    // into the database file, and the next write starts the WAL over from
    // its beginning. A reader holding a transaction open blocks both, so
    // the WAL grows while it lasts. Once it ends, the next checkpoint
    // completes and the restarted WAL is truncated to journal_size_limit.
    // That limit, 8 MiB, is about twice the WAL's steady size with 4 KiB
    // pages, so the file shrinks back after a long reader but is not
    // truncated in normal use. `serve` also checkpoints with TRUNCATE when
    // it stops (see `writer`).
    connection.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA journal_size_limit = 8388608;
         PRAGMA foreign_keys = ON;",
    )?;
    migrate(connection, path)
}

/// Applies `schema.sql` in one transaction when the file's user_version is
/// older than this build's.
fn migrate(connection: &Connection, path: &Path) -> anyhow::Result<()> {
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        bail!(
            "database {} has schema version {version}, newer than this dsevents (version {SCHEMA_VERSION}); upgrade dsevents",
            path.display()
        );
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    connection
        .execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA_SQL}; COMMIT;"))
        .with_context(|| format!("cannot apply the schema to database {}", path.display()))
        .inspect_err(|_| {
            // A failed batch can leave its transaction open.
            let _ = connection.execute_batch("ROLLBACK");
        })?;
    Ok(())
}

/// The outcome of normalizing a delivery, decided before it reaches the writer.
#[derive(Debug, Clone)]
pub enum Parsed {
    Stored(&'static Kind, Row),
    Quarantined(String),
    UnknownKind,
}

/// A delivery read and normalized, ready to be written.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub received_at: String,
    pub kind: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// The origin of a delivery that did not come over HTTP, such as
    /// `import events.ndjson:12`.
    pub source: Option<String>,
    pub sha256: [u8; 32],
    pub parsed: Parsed,
}

impl Delivery {
    /// Normalizes `body` for the kind slug `kind`. Never fails: a body that
    /// cannot be normalized becomes a quarantined delivery.
    pub fn new(kind: &str, body: Vec<u8>, content_type: Option<String>, received_at: String) -> Delivery {
        let parsed = match catalog::by_slug(kind) {
            None => Parsed::UnknownKind,
            // A panic while normalizing is a bug in dsevents, but the body
            // is still kept, quarantined, instead of the request being lost.
            Some(known) => match std::panic::catch_unwind(|| normalize::normalize(known, &body)) {
                Ok(Ok(row)) => Parsed::Stored(known, row),
                Ok(Err(reason)) => Parsed::Quarantined(reason),
                Err(_) => Parsed::Quarantined(
                    "normalizing the body panicked (a bug in dsevents); the raw body is kept".to_string(),
                ),
            },
        };
        let sha256 = Sha256::digest(&body).into();
        Delivery { received_at, kind: kind.to_string(), body, content_type, source: None, sha256, parsed }
    }

    pub fn outcome(&self) -> &'static str {
        match self.parsed {
            Parsed::Stored(..) => "stored",
            Parsed::Quarantined(_) => "quarantined",
            Parsed::UnknownKind => "unknown_kind",
        }
    }

    /// Returns the reason the body was not normalized, for quarantined and
    /// unknown kinds.
    pub fn reason(&self) -> Option<String> {
        match &self.parsed {
            Parsed::Stored(..) => None,
            Parsed::Quarantined(reason) => Some(reason.clone()),
            Parsed::UnknownKind => Some(format!(
                "unknown kind '{}'; the known kinds are {}",
                self.kind,
                catalog::slug_list()
            )),
        }
    }

    fn dsid(&self) -> Option<&str> {
        match &self.parsed {
            Parsed::Stored(_, row) => row.dsid.as_deref(),
            _ => None,
        }
    }
}

/// A delivery as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub id: i64,
    pub duplicate_of: Option<i64>,
}

/// Writes a delivery and its normalized row inside `tx`.
///
/// `duplicate_window_ms` is how far back an identical body of the same kind
/// makes this one a duplicate (a retry). An identical body is not a retry
/// when a different delivery of the same kind, or of its opposite kind, for
/// the same contact arrived in between. Opt-out, opt-in, opt-out again is a
/// contact changing their mind twice, and a lead status that goes back to
/// an earlier value is a real change.
pub fn insert_delivery(tx: &Transaction, delivery: &Delivery, duplicate_window_ms: i64) -> rusqlite::Result<Receipt> {
    let duplicate_of = find_original(tx, delivery, duplicate_window_ms)?;
    tx.prepare_cached(
        "INSERT INTO deliveries
             (received_at, kind, body, body_bytes, body_sha256, content_type, source, outcome, error, dsid, duplicate_of)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        delivery.received_at,
        delivery.kind,
        delivery.body,
        delivery.body.len() as i64,
        &delivery.sha256[..],
        delivery.content_type,
        delivery.source,
        delivery.outcome(),
        delivery.reason(),
        delivery.dsid(),
        duplicate_of,
    ])?;
    let id = tx.last_insert_rowid();

    if let Parsed::Stored(kind, row) = &delivery.parsed {
        insert_row(tx, kind, id, &delivery.received_at, row)?;
    }
    Ok(Receipt { id, duplicate_of })
}

/// Writes (or rewrites) the normalized row of delivery `id`.
pub fn insert_row(tx: &Connection, kind: &Kind, id: i64, received_at: &str, row: &Row) -> rusqlite::Result<()> {
    let sql = insert_sql(kind);
    let mut statement = tx.prepare_cached(&sql)?;
    let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(row.values.len() + 2);
    values.push(&id);
    values.push(&received_at);
    for value in &row.values {
        values.push(value);
    }
    statement.execute(values.as_slice())?;
    Ok(())
}

/// Builds a kind's insert statement from the catalogue's column names,
/// which are constants, never request data.
fn insert_sql(kind: &Kind) -> String {
    let columns = kind.columns();
    let placeholders: Vec<String> = (1..=columns.len() + 2).map(|n| format!("?{n}")).collect();
    format!(
        "INSERT OR REPLACE INTO {} (delivery_id, received_at, {}) VALUES ({})",
        kind.table,
        columns.join(", "),
        placeholders.join(", ")
    )
}

/// The newest earlier copy of a body of the same kind within the window, or
/// NULL. It runs on every insert, so it must search `deliveries_fingerprint`
/// (a test checks the plan). `max(id)` rather than `ORDER BY id DESC LIMIT
/// 1` because the latter sorted the matches in a temporary b-tree, which
/// SQLite creates and zeroes a page for even when nothing matches.
const FIND_ORIGINAL_SQL: &str = "SELECT max(id) FROM deliveries
  WHERE body_sha256 = ?1 AND kind = ?2 AND received_at >= ?3 AND duplicate_of IS NULL";

fn find_original(tx: &Transaction, delivery: &Delivery, window_ms: i64) -> rusqlite::Result<Option<i64>> {
    if window_ms <= 0 {
        return Ok(None);
    }
    let since = chrono::DateTime::parse_from_rfc3339(&delivery.received_at)
        .map(|time| crate::time::format_utc(time.to_utc() - chrono::Duration::milliseconds(window_ms)))
        .unwrap_or_default();
    let original: Option<i64> = tx
        .prepare_cached(FIND_ORIGINAL_SQL)?
        .query_row(params![&delivery.sha256[..], delivery.kind, since], |row| row.get(0))?;
    let (Some(original), Some(dsid)) = (original, delivery.dsid()) else {
        return Ok(original);
    };
    // Email opt-outs and opt-ins share one body shape, so an opt-in between
    // two identical opt-outs can carry the very same bytes: a delivery of
    // the opposite kind counts even with an identical body.
    let opposite_kind = catalog::opposite(&delivery.kind).unwrap_or(&delivery.kind);
    let changed_since: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM deliveries
                             WHERE dsid = ?1 AND id > ?2 AND kind IN (?4, ?5)
                               AND (body_sha256 <> ?3 OR kind <> ?4))",
        )?
        .query_row(
            params![dsid, original, &delivery.sha256[..], delivery.kind, opposite_kind],
            |row| row.get(0),
        )?;
    Ok(if changed_since { None } else { Some(original) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_points_to_first_copy() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let body = br#"{"id":"lnk-1"}"#.to_vec();
        let tx = connection.transaction().unwrap();
        let mut receipts = Vec::new();
        for second in 1..=3 {
            let received_at = format!("2026-03-01T14:05:0{second}.000Z");
            let delivery = Delivery::new("link-clicked", body.clone(), None, received_at);
            receipts.push(insert_delivery(&tx, &delivery, 60_000).unwrap());
        }
        let other = Delivery::new("link-clicked", br#"{"id":"lnk-2"}"#.to_vec(), None, "2026-03-01T14:05:04.000Z".into());
        let other = insert_delivery(&tx, &other, 60_000).unwrap();
        tx.commit().unwrap();

        assert_eq!(receipts[0].duplicate_of, None);
        assert_eq!(receipts[1].duplicate_of, Some(receipts[0].id));
        assert_eq!(receipts[2].duplicate_of, Some(receipts[0].id));
        assert_eq!(other.duplicate_of, None);
    }

    #[test]
    fn retry_outside_window_is_new() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let body = br#"{"id":"lnk-1"}"#.to_vec();
        let tx = connection.transaction().unwrap();
        let first = Delivery::new("link-clicked", body.clone(), None, "2026-03-01T14:00:00.000Z".into());
        let first = insert_delivery(&tx, &first, 60_000).unwrap();
        let late = Delivery::new("link-clicked", body, None, "2026-03-01T14:01:00.001Z".into());
        let late = insert_delivery(&tx, &late, 60_000).unwrap();
        tx.commit().unwrap();

        assert_eq!(first.duplicate_of, None);
        assert_eq!(late.duplicate_of, None);
    }

    /// The duplicate lookup runs inside the writer's transaction for every
    /// delivery, so a plan that scans the kind's deliveries would make each
    /// insert slower as the table grows.
    #[test]
    fn duplicate_lookup_uses_fingerprint_index() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let plan: Vec<String> = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {FIND_ORIGINAL_SQL}"))
            .unwrap()
            .query_map(params![&[0u8; 32][..], "email-opt-out", "2026-01-01T00:00:00.000Z"], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let search = plan.iter().find(|step| step.starts_with("SEARCH deliveries"));
        assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "plan: {plan:?}");
        assert!(
            search.is_some_and(|step| step.contains("deliveries_fingerprint (body_sha256=? AND kind=? AND received_at>?)")),
            "plan: {plan:?}"
        );
    }
}
