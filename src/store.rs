//! The SQLite store: opening a database with the settings every command
//! relies on, applying `schema.sql`, and writing one delivery.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
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
    // returned survives power loss. `serve`'s writer switches to NORMAL and
    // syncs the WAL on a thread of its own before it responds, which keeps
    // the same promise (see `writer`).
    let mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .with_context(|| format!("cannot use database {}: is it a SQLite file?", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("database {} cannot use WAL journaling (got {mode})", path.display());
    }
    // Checkpoint policy: a checkpoint copies the WAL into the database
    // file, and the next write after a complete one starts the WAL over
    // from its beginning. `serve` checkpoints on a thread of its own while
    // it writes and starts the WAL over at about 4000 pages, 16 MB, or at
    // 6000 if background checkpoints fall behind (see `writer`); other
    // commands leave it to SQLite's automatic checkpoint at 1000 pages. A
    // reader holding a transaction open keeps checkpoints from completing,
    // so the WAL grows while it lasts. Once it ends, the next checkpoint
    // completes and the restarted WAL is truncated to journal_size_limit.
    // That limit, 32 MiB, is above the WAL's size under load, so the file
    // shrinks back after a long reader but is not truncated in normal use.
    // `serve` also checkpoints with TRUNCATE when it stops.
    connection.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA journal_size_limit = 33554432;
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

/// Writes a delivery and its normalized row inside `tx`, and marks it as a
/// duplicate (a retry) when `recent` knows an earlier copy; see
/// [`RecentBodies`].
pub fn insert_delivery(tx: &Transaction, delivery: &Delivery, recent: &mut RecentBodies) -> rusqlite::Result<Receipt> {
    let duplicate_of = recent.find_original(tx, delivery)?;
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
    recent.record(delivery, id);

    if let Parsed::Stored(kind, row) = &delivery.parsed {
        insert_row(tx, kind, id, &delivery.received_at, row)?;
    }
    Ok(Receipt { id, duplicate_of })
}

/// Writes (or rewrites) the normalized row of delivery `id`.
pub fn insert_row(tx: &Connection, kind: &Kind, id: i64, received_at: &str, row: &Row) -> rusqlite::Result<()> {
    static INSERTS: OnceLock<Vec<String>> = OnceLock::new();
    let inserts = INSERTS.get_or_init(|| catalog::KINDS.iter().map(insert_sql).collect());
    // Built once per kind rather than on every insert.
    let built;
    let sql = match catalog::KINDS.iter().position(|known| known.table == kind.table) {
        Some(index) => inserts[index].as_str(),
        None => {
            built = insert_sql(kind);
            built.as_str()
        }
    };
    let mut statement = tx.prepare_cached(sql)?;
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

/// The bodies received within the duplicate window, kept in memory to find
/// retries.
///
/// A delivery is a duplicate when an identical body of the same kind
/// arrived at most the window before it (DailyStory retries a delivery
/// whose answer it did not get). It points to the newest such copy that is
/// not itself a duplicate. An identical body is not a retry, though, when a
/// different delivery of the same kind, or of its opposite kind, for the
/// same contact arrived in between: opt-out, opt-in, opt-out again is a
/// contact changing their mind twice.
///
/// An index on `body_sha256` would answer the lookup in SQL, but its keys
/// are random, so each delivery wrote a page of its own into it, and
/// profiling showed page writes bound the writer. Here a map from
/// fingerprint (the first 8 bytes of the SHA-256, mixed with the kind) to
/// the newest delivery with it holds the window, read at the first lookup
/// through `deliveries_received` and kept up to date by `insert_delivery`.
/// A hit is confirmed against the stored row, so a fingerprint collision
/// never marks a delivery wrongly. Deliveries that another process writes
/// after the map was read (an import beside `serve`) are not in it.
pub struct RecentBodies {
    window_ms: i64,
    /// Fingerprint to the newest delivery id with it and its time in ms.
    newest: HashMap<u64, (i64, i64)>,
    /// The entries replaced since the last commit, oldest first, to undo
    /// them when the transaction rolls back.
    undo: Vec<(u64, Option<(i64, i64)>)>,
    /// Every delivery received at or after this time (ms) is in `newest`.
    loaded_from: Option<i64>,
    /// The latest receive time recorded, in ms.
    latest_ms: i64,
    /// `newest` drops expired entries when it reaches this size.
    purge_at: usize,
}

impl RecentBodies {
    /// `window_ms` of 0 or less disables duplicate marking.
    pub fn new(window_ms: i64) -> RecentBodies {
        RecentBodies {
            window_ms,
            newest: HashMap::new(),
            undo: Vec::new(),
            loaded_from: None,
            latest_ms: i64::MIN,
            purge_at: 4096,
        }
    }

    /// Keeps the deliveries recorded since the last commit. Call it after
    /// the transaction commits.
    pub fn commit(&mut self) {
        self.undo.clear();
        if self.newest.len() >= self.purge_at {
            let cutoff = self.latest_ms.saturating_sub(self.window_ms);
            self.newest.retain(|_, (_, received_ms)| *received_ms >= cutoff);
            self.loaded_from = self.loaded_from.map(|from| from.max(cutoff));
            self.purge_at = (self.newest.len() * 2).max(4096);
        }
    }

    /// Forgets the deliveries recorded since the last commit. Call it when
    /// the transaction rolls back: SQLite gives their ids to the next rows.
    pub fn roll_back(&mut self) {
        for (key, previous) in self.undo.drain(..).rev() {
            match previous {
                Some(entry) => self.newest.insert(key, entry),
                None => self.newest.remove(&key),
            };
        }
    }

    /// The fingerprint of a body of a kind.
    fn key(sha256: &[u8; 32], kind: &str) -> u64 {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&sha256[..8]);
        // FNV-1a of the kind, so that an opt-out and an opt-in with the same
        // body have different fingerprints.
        let kind = kind.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        u64::from_le_bytes(prefix) ^ kind
    }

    fn record(&mut self, delivery: &Delivery, id: i64) {
        if self.window_ms <= 0 {
            return;
        }
        let Some(received_ms) = millis(&delivery.received_at) else { return };
        let key = Self::key(&delivery.sha256, &delivery.kind);
        let previous = self.newest.get(&key).copied();
        if previous.is_some_and(|(newest_id, _)| newest_id > id) {
            return;
        }
        self.undo.push((key, previous));
        self.newest.insert(key, (id, received_ms));
        self.latest_ms = self.latest_ms.max(received_ms);
    }

    /// Reads the deliveries received since `since_ms` that are not in the
    /// map yet.
    fn load(&mut self, connection: &Connection, since_ms: i64) -> rusqlite::Result<()> {
        if self.loaded_from.is_some_and(|from| from <= since_ms) {
            return Ok(());
        }
        let since = crate::time::format_utc(chrono::DateTime::from_timestamp_millis(since_ms).unwrap_or_default());
        let until = self
            .loaded_from
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(crate::time::format_utc);
        let mut statement = connection.prepare_cached(
            "SELECT id, kind, body_sha256, received_at FROM deliveries
              WHERE received_at >= ?1 AND (?2 IS NULL OR received_at < ?2)",
        )?;
        let mut rows = statement.query(params![since, until])?;
        while let Some(row) = rows.next()? {
            let (id, kind, sha256, received_at): (i64, String, Vec<u8>, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
            let (Ok(sha256), Some(received_ms)) = (<[u8; 32]>::try_from(sha256), millis(&received_at)) else {
                continue;
            };
            let entry = self.newest.entry(Self::key(&sha256, &kind)).or_insert((id, received_ms));
            if entry.0 < id {
                *entry = (id, received_ms);
            }
        }
        self.loaded_from = Some(since_ms);
        Ok(())
    }

    /// The delivery `delivery` repeats, if it is a retry.
    fn find_original(&mut self, tx: &Connection, delivery: &Delivery) -> rusqlite::Result<Option<i64>> {
        if self.window_ms <= 0 {
            return Ok(None);
        }
        let Some(received_ms) = millis(&delivery.received_at) else { return Ok(None) };
        let since_ms = received_ms.saturating_sub(self.window_ms);
        self.load(tx, since_ms)?;
        let Some(&(candidate, _)) = self.newest.get(&Self::key(&delivery.sha256, &delivery.kind)) else { return Ok(None) };

        // The newest delivery with this fingerprint, or the original it
        // repeats, is the newest original: confirm it is the same body and
        // kind, and within the window.
        let found: Option<(Vec<u8>, String, i64)> = tx
            .prepare_cached("SELECT body_sha256, kind, coalesce(duplicate_of, id) FROM deliveries WHERE id = ?1")?
            .query_row([candidate], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?;
        let Some((sha256, kind, original)) = found else { return Ok(None) };
        if sha256 != delivery.sha256 || kind != delivery.kind {
            return Ok(None);
        }
        let original_ms: Option<i64> = tx
            .prepare_cached("SELECT received_at FROM deliveries WHERE id = ?1")?
            .query_row([original], |row| row.get::<_, String>(0))
            .optional()?
            .and_then(|text| millis(&text));
        if original_ms.map_or(true, |ms| ms < since_ms) {
            return Ok(None);
        }
        Ok(if changed_since(tx, delivery, original)? { None } else { Some(original) })
    }
}

/// Whether the contact of `delivery` had another delivery of its kind, or
/// one of the opposite kind, after delivery `original`. Reads the kinds'
/// tables through their dsid indexes.
fn changed_since(tx: &Connection, delivery: &Delivery, original: i64) -> rusqlite::Result<bool> {
    let (Parsed::Stored(kind, _), Some(dsid)) = (&delivery.parsed, delivery.dsid()) else {
        return Ok(false);
    };
    // Email opt-outs and opt-ins share one body shape, so an opt-in between
    // two identical opt-outs can carry the very same bytes: a delivery of
    // the opposite kind counts even with an identical body.
    let same_kind = format!(
        "SELECT EXISTS (SELECT 1 FROM {table} k JOIN deliveries d ON d.id = k.delivery_id
                         WHERE k.dsid = ?1 AND k.delivery_id > ?2 AND d.body_sha256 <> ?3)",
        table = kind.table
    );
    if tx.prepare_cached(&same_kind)?.query_row(params![dsid, original, &delivery.sha256[..]], |row| row.get(0))? {
        return Ok(true);
    }
    let Some(opposite) = catalog::opposite(kind.slug).and_then(catalog::by_slug) else { return Ok(false) };
    let opposite_kind =
        format!("SELECT EXISTS (SELECT 1 FROM {} WHERE dsid = ?1 AND delivery_id > ?2)", opposite.table);
    tx.prepare_cached(&opposite_kind)?.query_row(params![dsid, original], |row| row.get(0))
}

/// Milliseconds since the Unix epoch of a stored received_at text.
fn millis(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes each delivery in its own transaction, as the writer does
    /// under light load.
    fn write(connection: &mut Connection, recent: &mut RecentBodies, deliveries: &[Delivery]) -> Vec<Receipt> {
        let mut receipts = Vec::new();
        for delivery in deliveries {
            let tx = connection.transaction().unwrap();
            receipts.push(insert_delivery(&tx, delivery, recent).unwrap());
            tx.commit().unwrap();
            recent.commit();
        }
        receipts
    }

    fn click(id: &str, received_at: &str) -> Delivery {
        Delivery::new("link-clicked", format!(r#"{{"id":"{id}"}}"#).into_bytes(), None, received_at.to_string())
    }

    #[test]
    fn retry_points_to_first_copy() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let mut recent = RecentBodies::new(60_000);
        let receipts = write(
            &mut connection,
            &mut recent,
            &[
                click("lnk-1", "2026-03-01T14:05:01.000Z"),
                click("lnk-1", "2026-03-01T14:05:02.000Z"),
                click("lnk-1", "2026-03-01T14:05:03.000Z"),
                click("lnk-2", "2026-03-01T14:05:04.000Z"),
            ],
        );

        assert_eq!(receipts[0].duplicate_of, None);
        assert_eq!(receipts[1].duplicate_of, Some(receipts[0].id));
        assert_eq!(receipts[2].duplicate_of, Some(receipts[0].id));
        assert_eq!(receipts[3].duplicate_of, None);
    }

    #[test]
    fn retry_outside_window_is_new() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let mut recent = RecentBodies::new(60_000);
        let receipts = write(
            &mut connection,
            &mut recent,
            &[click("lnk-1", "2026-03-01T14:00:00.000Z"), click("lnk-1", "2026-03-01T14:01:00.001Z")],
        );

        assert_eq!(receipts[0].duplicate_of, None);
        assert_eq!(receipts[1].duplicate_of, None);
    }

    /// A restarted server reads the window back from the database, so a
    /// retry that arrives after the restart is still marked.
    #[test]
    fn retry_found_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let first = {
            let mut connection = open_or_create(&path).unwrap();
            write(&mut connection, &mut RecentBodies::new(60_000), &[click("lnk-1", "2026-03-01T14:00:00.000Z")])
        };
        let mut connection = open_existing(&path).unwrap();
        let retry = write(&mut connection, &mut RecentBodies::new(60_000), &[click("lnk-1", "2026-03-01T14:00:30.000Z")]);

        assert_eq!(retry[0].duplicate_of, Some(first[0].id));
    }

    /// A rolled-back delivery is forgotten: SQLite hands its id to the next
    /// row, which must not be taken for its copy.
    #[test]
    fn rolled_back_delivery_forgotten() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let mut recent = RecentBodies::new(60_000);
        {
            let tx = connection.transaction().unwrap();
            insert_delivery(&tx, &click("lnk-1", "2026-03-01T14:00:00.000Z"), &mut recent).unwrap();
            tx.rollback().unwrap();
            recent.roll_back();
        }
        let receipts = write(
            &mut connection,
            &mut recent,
            &[click("lnk-2", "2026-03-01T14:00:01.000Z"), click("lnk-1", "2026-03-01T14:00:02.000Z")],
        );

        assert_eq!(receipts[0].id, 1);
        assert_eq!(receipts[1].duplicate_of, None);
    }

    /// Expired bodies leave the map once it grows, and a body repeated
    /// after the window is a new delivery again.
    #[test]
    fn expired_bodies_purged() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let mut recent = RecentBodies::new(1_000);
        let start = chrono::DateTime::parse_from_rfc3339("2026-03-01T14:00:00.000Z").unwrap().to_utc();
        let tx = connection.transaction().unwrap();
        for n in 0..10_000 {
            let at = crate::time::format_utc(start + chrono::Duration::milliseconds(n));
            insert_delivery(&tx, &click(&format!("lnk-{n}"), &at), &mut recent).unwrap();
        }
        tx.commit().unwrap();
        recent.commit();

        assert!(recent.newest.len() <= 1_001, "{} entries kept", recent.newest.len());
        let late = crate::time::format_utc(start + chrono::Duration::milliseconds(10_000));
        let again = write(&mut connection, &mut recent, &[click("lnk-9990", &late), click("lnk-5", &late)]);
        assert_eq!(again[0].duplicate_of, Some(9_991));
        assert_eq!(again[1].duplicate_of, None);
    }
}
