//! The SQLite store: opening a database with the settings every command
//! relies on, applying `schema.sql`, and writing one delivery.

use std::collections::{HashMap, HashSet};
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
pub const SCHEMA_VERSION: i64 = 2;

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
    let version = read_user_version(&connection, path)?;
    if version == SCHEMA_VERSION {
        return Ok(connection);
    }
    check_schema(&connection, path, false)?;
    if (1..SCHEMA_VERSION).contains(&version) {
        match open_existing(path) {
            Ok(upgraded) => return Ok(upgraded),
            // Such as a file this user may read but not write. The older
            // versions differ only in indexes and views, so reports still work.
            Err(error) => {
                log::warn!(
                    "database {} has schema version {version} and cannot be upgraded to {SCHEMA_VERSION} here ({error:#}); \
                     reading it as it is. Run any dsevents command that writes, such as `dsevents serve`, \
                     once as a user who may write the file",
                    path.display()
                );
                return Ok(connection);
            }
        }
    }
    drop(connection);
    open_existing(path)
}

/// Reads the schema version. It is the first read of the file, so its
/// errors explain why the file could not be read.
fn read_user_version(connection: &Connection, path: &Path) -> anyhow::Result<i64> {
    match connection.query_row("PRAGMA user_version", [], |row| row.get(0)) {
        Ok(version) => Ok(version),
        // SQLITE_READONLY_DIRECTORY: the WAL index file could not be
        // created beside the database.
        Err(rusqlite::Error::SqliteFailure(failure, _))
            if failure.extended_code == rusqlite::ffi::SQLITE_READONLY_DIRECTORY =>
        {
            let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
            bail!(
                "cannot read database {}: its directory {} is not writable, and SQLite must create {}-shm there \
                 while no other program has the database open (serve keeps it while it runs). Run as a user who \
                 may write to {}, or while serve is running",
                path.display(),
                directory.display(),
                path.display(),
                directory.display()
            )
        }
        Err(error) => {
            Err(error).with_context(|| format!("cannot read database {}: is it a SQLite file?", path.display()))
        }
    }
}

/// Fails unless the file is a dsevents database, or (when `may_create`) an
/// empty one that dsevents may set up. Runs before anything is written, so
/// another program's SQLite file given by mistake is left untouched.
fn check_schema(connection: &Connection, path: &Path, may_create: bool) -> anyhow::Result<()> {
    let version = read_user_version(connection, path)?;
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
    // it writes, and starts the WAL over at about 16000 pages, 64 MiB, or
    // at 20000 if background checkpoints fall behind (see `writer`). Other
    // commands leave it to SQLite's automatic checkpoint at 1000 pages. A
    // reader holding a transaction open keeps checkpoints from completing,
    // so the WAL grows while it lasts. Once it ends, the next checkpoint
    // completes and the restarted WAL is truncated to journal_size_limit.
    // That limit, 96 MiB, is above the WAL's size under load, so the file
    // shrinks back after a long reader but is not truncated in normal use.
    // `serve` also checkpoints with TRUNCATE when it stops.
    connection.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA journal_size_limit = 100663296;
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

    /// Returns the contact id: from the normalized row, or else read from
    /// the body, which also finds it in a quarantined delivery.
    pub fn dsid(&self) -> Option<String> {
        match &self.parsed {
            Parsed::Stored(_, row) => row.dsid.clone(),
            Parsed::Quarantined(_) | Parsed::UnknownKind => normalize::find_dsid(&self.body),
        }
    }
}

/// Returns the ids of the deliveries that are retries (have a duplicate_of),
/// read through the small partial index deliveries_duplicates. Reports
/// leave these out.
pub fn retry_ids(connection: &Connection) -> rusqlite::Result<HashSet<i64>> {
    connection
        .prepare("SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL")?
        .query_map([], |row| row.get(0))?
        .collect()
}

/// Returns the 64-bit FNV-1a hash of `bytes`, continuing from `hash` (pass
/// `FNV_OFFSET` to start). Much cheaper than SipHash for short keys that
/// no one chooses to collide.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// The FNV-1a offset basis, the starting value of `fnv1a`.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// A delivery as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub id: i64,
    pub duplicate_of: Option<i64>,
}

/// Writes a delivery and its normalized row inside `tx`, and marks it as a
/// duplicate (a retry) when `recent` finds an earlier copy (see
/// [`RecentBodies`]).
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
/// that got no 2xx response). It points to the newest such copy that is
/// not itself a duplicate. An identical body is not a retry, though, when a
/// different delivery of the same kind, or of its opposite kind, for the
/// same contact arrived in between: opt-out, opt-in, opt-out again is a
/// contact changing their mind twice.
///
/// An index on `body_sha256` would serve the lookup in SQL, but its keys
/// are random, so each delivery wrote a page of its own into it, and
/// profiling showed page writes bound the writer. Here a map from a 32-bit
/// fingerprint (of the SHA-256 and the kind) to the newest delivery with it
/// contains the window, 9 bytes a delivery, read at the first lookup through
/// `deliveries_received` and kept up to date by `insert_delivery`. A hit is
/// confirmed against the stored row, so a fingerprint that two bodies share
/// never marks a delivery wrongly; the second body goes to a small map of
/// its own. The map is kept in two generations of one window each, and the
/// older is dropped when a third begins. Deliveries that another process
/// writes after the map was read (an import beside `serve`) are not in it.
pub struct RecentBodies {
    window_ms: i64,
    /// 32-bit fingerprint to the low 32 bits of the newest delivery id with
    /// it, for the deliveries received since `current_from`.
    current: HashMap<u32, u32>,
    /// The same for the window before.
    previous: HashMap<u32, u32>,
    /// Bodies whose 32-bit fingerprint another body holds: their 64-bit
    /// fingerprint to the newest delivery id.
    collided: HashMap<u64, i64>,
    /// When the current generation began, in ms of received time.
    current_from: i64,
    /// The first delivery id of the previous generation.
    previous_first_id: i64,
    /// Entries changed since the last commit, oldest first, to undo them
    /// when the transaction rolls back.
    undo: Vec<Undo>,
    /// Every delivery received at or after this time (ms) is in the maps.
    loaded_from: Option<i64>,
    /// The greatest delivery id recorded; the maps hold its low 32 bits.
    newest_id: i64,
    /// The latest receive time recorded, in ms.
    latest_ms: i64,
    /// Set by the last lookup when another body held its fingerprint.
    collision: bool,
}

enum Undo {
    Current(u32, Option<u32>),
    Collided(u64, Option<i64>),
}

impl RecentBodies {
    /// `window_ms` of 0 or less disables duplicate marking.
    pub fn new(window_ms: i64) -> RecentBodies {
        RecentBodies {
            window_ms,
            current: HashMap::new(),
            previous: HashMap::new(),
            collided: HashMap::new(),
            current_from: i64::MIN,
            previous_first_id: 0,
            undo: Vec::new(),
            loaded_from: None,
            newest_id: 0,
            latest_ms: i64::MIN,
            collision: false,
        }
    }

    /// Keeps the deliveries recorded since the last commit. Call it after
    /// the transaction commits.
    pub fn commit(&mut self) {
        self.undo.clear();
        if self.current_from == i64::MIN {
            self.current_from = self.latest_ms;
        } else if self.latest_ms.saturating_sub(self.current_from) >= self.window_ms {
            // The previous generation is now older than one window.
            self.previous = std::mem::take(&mut self.current);
            let first_id = self.previous_first_id;
            self.collided.retain(|_, id| *id >= first_id);
            self.previous_first_id = self.newest_id;
            self.loaded_from = self.loaded_from.map(|from| from.max(self.current_from));
            self.current_from = self.latest_ms;
        }
    }

    /// Forgets the deliveries recorded since the last commit. Call it when
    /// the transaction rolls back: SQLite gives their ids to the next rows.
    pub fn roll_back(&mut self) {
        for undo in self.undo.drain(..).rev() {
            match undo {
                Undo::Current(key, Some(low)) => self.current.insert(key, low).map(|_| ()),
                Undo::Current(key, None) => self.current.remove(&key).map(|_| ()),
                Undo::Collided(key, Some(id)) => self.collided.insert(key, id).map(|_| ()),
                Undo::Collided(key, None) => self.collided.remove(&key).map(|_| ()),
            };
        }
    }

    /// Returns the 64-bit fingerprint of a body of a kind. Its low 32 bits
    /// are the short fingerprint.
    fn key(sha256: &[u8; 32], kind: &str) -> u64 {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&sha256[..8]);
        // FNV-1a of the kind, so that an opt-out and an opt-in with the same
        // body have different fingerprints.
        u64::from_le_bytes(prefix) ^ fnv1a(FNV_OFFSET, kind.as_bytes())
    }

    /// Returns the delivery id whose low 32 bits are `low`: the greatest one
    /// not above `newest_id`.
    fn full_id(&self, low: u32) -> i64 {
        let id = (self.newest_id & !0xFFFF_FFFF) | i64::from(low);
        if id > self.newest_id {
            id - (1 << 32)
        } else {
            id
        }
    }

    /// Returns the newest delivery id that either generation has for a
    /// short fingerprint.
    fn newest_with(&self, short: u32) -> Option<i64> {
        let current = self.current.get(&short).map(|&low| self.full_id(low));
        let previous = self.previous.get(&short).map(|&low| self.full_id(low));
        current.max(previous)
    }

    fn record(&mut self, delivery: &Delivery, id: i64) {
        let collision = std::mem::take(&mut self.collision);
        if self.window_ms <= 0 {
            return;
        }
        let Some(received_ms) = millis(&delivery.received_at) else { return };
        self.latest_ms = self.latest_ms.max(received_ms);
        self.newest_id = self.newest_id.max(id);
        let key = Self::key(&delivery.sha256, &delivery.kind);
        if collision || self.collided.contains_key(&key) {
            let previous = self.collided.insert(key, id);
            self.undo.push(Undo::Collided(key, previous));
        } else {
            let previous = self.current.insert(key as u32, id as u32);
            self.undo.push(Undo::Current(key as u32, previous));
        }
    }

    /// Reads the deliveries received since `since_ms` that are not in the
    /// maps yet.
    fn load(&mut self, connection: &Connection, since_ms: i64) -> rusqlite::Result<()> {
        if self.loaded_from.is_some_and(|from| from <= since_ms) {
            return Ok(());
        }
        let since = crate::time::format_utc(chrono::DateTime::from_timestamp_millis(since_ms).unwrap_or_default());
        let until = self
            .loaded_from
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(crate::time::format_utc);

        // Through deliveries_received, in its order. With ORDER BY id,
        // SQLite read the whole table instead (a test checks the plan).
        let mut statement = connection.prepare_cached(LOAD_SQL)?;
        let mut rows = statement.query(params![since, until])?;
        // The 64-bit fingerprint behind each short one read here, to tell
        // two bodies that share a short one apart.
        let mut owners: HashMap<u32, u64> = HashMap::new();
        while let Some(row) = rows.next()? {
            let (id, kind, sha256): (i64, String, Vec<u8>) = (row.get(0)?, row.get(1)?, row.get(2)?);
            let Ok(sha256) = <[u8; 32]>::try_from(sha256) else { continue };
            let key = Self::key(&sha256, &kind);
            self.newest_id = self.newest_id.max(id);

            let owner = match owners.get(&(key as u32)) {
                Some(&owner) => owner,
                None => {
                    // The body the maps hold under this short fingerprint
                    // from an earlier read or write, if any.
                    let owner = match self.newest_with(key as u32) {
                        Some(newest) => key_of_delivery(connection, newest)?.unwrap_or(key),
                        None => key,
                    };
                    owners.insert(key as u32, owner);
                    owner
                }
            };

            // The maps keep the newest id of a body, also when an older
            // range is read after a newer one (an import going back in time).
            if owner == key {
                if self.newest_with(key as u32).is_none_or(|newest| newest < id) {
                    self.current.insert(key as u32, id as u32);
                }
            } else {
                let newest = self.collided.entry(key).or_insert(id);
                *newest = (*newest).max(id);
            }
        }

        self.loaded_from = Some(since_ms);
        if self.current_from == i64::MIN {
            self.current_from = since_ms;
        }
        Ok(())
    }

    /// Returns the delivery that `delivery` repeats, if it is a retry.
    fn find_original(&mut self, tx: &Connection, delivery: &Delivery) -> rusqlite::Result<Option<i64>> {
        self.collision = false;
        if self.window_ms <= 0 {
            return Ok(None);
        }
        let Some(received_ms) = millis(&delivery.received_at) else { return Ok(None) };
        let since_ms = received_ms.saturating_sub(self.window_ms);
        self.load(tx, since_ms)?;
        let key = Self::key(&delivery.sha256, &delivery.kind);
        let candidate = match self.collided.get(&key) {
            Some(&id) => id,
            None => match self.newest_with(key as u32) {
                Some(id) => id,
                None => return Ok(None),
            },
        };

        // The newest delivery with this fingerprint, or the original it
        // repeats, is the newest original: confirm it is the same body and
        // kind, and within the window.
        let found: Option<(Vec<u8>, String, i64)> = tx
            .prepare_cached("SELECT body_sha256, kind, coalesce(duplicate_of, id) FROM deliveries WHERE id = ?1")?
            .query_row([candidate], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?;
        let Some((sha256, kind, original)) = found else { return Ok(None) };
        if sha256 != delivery.sha256 || kind != delivery.kind {
            self.collision = !self.collided.contains_key(&key);
            return Ok(None);
        }
        let original_ms: Option<i64> = tx
            .prepare_cached("SELECT received_at FROM deliveries WHERE id = ?1")?
            .query_row([original], |row| row.get::<_, String>(0))
            .optional()?
            .and_then(|text| millis(&text));
        if original_ms.is_none_or(|ms| ms < since_ms) {
            return Ok(None);
        }
        Ok(if changed_since(tx, delivery, original)? { None } else { Some(original) })
    }
}

/// Returns the 64-bit fingerprint of stored delivery `id`, if it exists.
fn key_of_delivery(connection: &Connection, id: i64) -> rusqlite::Result<Option<u64>> {
    let found: Option<(String, Vec<u8>)> = connection
        .prepare_cached("SELECT kind, body_sha256 FROM deliveries WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(found.and_then(|(kind, sha256)| <[u8; 32]>::try_from(sha256).ok().map(|sha256| RecentBodies::key(&sha256, &kind))))
}

/// Reads the deliveries of a range of receive times back into `RecentBodies`.
const LOAD_SQL: &str = "SELECT id, kind, body_sha256 FROM deliveries
  WHERE received_at >= ?1 AND (?2 IS NULL OR received_at < ?2)";

/// Returns whether the contact of `delivery` had another delivery of its
/// kind, or one of the opposite kind, after delivery `original`. Reads the kinds'
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

    /// Returns two link ids, lower first, whose click bodies share the low
    /// 32 bits of their 64-bit fingerprints. A few hundred thousand tries
    /// suffice.
    fn links_sharing_short_fingerprint() -> (String, String) {
        let mut seen: HashMap<u32, usize> = HashMap::new();
        let (first, second) = (0..1_000_000)
            .find_map(|n| {
                let delivery = click(&format!("lnk-{n}"), "2026-03-01T14:00:00.000Z");
                let short = RecentBodies::key(&delivery.sha256, &delivery.kind) as u32;
                seen.insert(short, n).map(|earlier| (earlier, n))
            })
            .expect("a shared fingerprint");
        (format!("lnk-{first}"), format!("lnk-{second}"))
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

    /// Bodies older than two windows leave the map, and a body repeated
    /// after the window is a new delivery again.
    #[test]
    fn expired_bodies_dropped() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let mut recent = RecentBodies::new(1_000);
        let start = chrono::DateTime::parse_from_rfc3339("2026-03-01T14:00:00.000Z").unwrap().to_utc();
        for batch in 0..100 {
            let tx = connection.transaction().unwrap();
            for n in batch * 100..(batch + 1) * 100 {
                let at = crate::time::format_utc(start + chrono::Duration::milliseconds(n));
                insert_delivery(&tx, &click(&format!("lnk-{n}"), &at), &mut recent).unwrap();
            }
            tx.commit().unwrap();
            recent.commit();
        }

        let entries = recent.current.len() + recent.previous.len();
        assert!(entries <= 2_100, "{entries} entries kept for a window of 1,000 deliveries");
        let late = crate::time::format_utc(start + chrono::Duration::milliseconds(10_000));
        let again = write(&mut connection, &mut recent, &[click("lnk-9990", &late), click("lnk-5", &late)]);
        assert_eq!(again[0].duplicate_of, Some(9_991));
        assert_eq!(again[1].duplicate_of, None);
    }

    /// A delivery received earlier than the window already read (an import
    /// with --received-at-field) reads that older range into the map. It
    /// must not replace a newer copy there, or a later retry of the newer
    /// copy is not marked.
    #[test]
    fn older_range_keeps_newer_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        // serve: the same body twice, more than the window apart.
        let served = {
            let mut connection = open_or_create(&path).unwrap();
            write(
                &mut connection,
                &mut RecentBodies::new(60_000),
                &[click("lnk-1", "2026-03-01T14:00:00.000Z"), click("lnk-1", "2026-03-01T14:02:00.000Z")],
            )
        };
        assert_eq!(served[1].duplicate_of, None);

        // import: two other bodies, the second older than the first, then a
        // retry 40 s after the newer copy of lnk-1.
        let mut connection = open_existing(&path).unwrap();
        let imported = write(
            &mut connection,
            &mut RecentBodies::new(60_000),
            &[
                click("lnk-2", "2026-03-01T14:02:30.000Z"),
                click("lnk-3", "2026-03-01T14:00:30.000Z"),
                click("lnk-1", "2026-03-01T14:02:40.000Z"),
            ],
        );

        assert_eq!(imported[2].duplicate_of, Some(served[1].id));
    }

    /// A database of schema version 1 is brought to version 2: its three
    /// indexes of deliveries give way to deliveries_received.
    #[test]
    fn version_1_database_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        open_or_create(&path)
            .unwrap()
            .execute_batch(
                "DROP INDEX deliveries_received;
                 CREATE INDEX deliveries_kind_received ON deliveries (kind, received_at);
                 CREATE INDEX deliveries_fingerprint ON deliveries (body_sha256, kind, received_at);
                 CREATE INDEX deliveries_dsid ON deliveries (dsid) WHERE dsid IS NOT NULL;
                 PRAGMA user_version = 1;",
            )
            .unwrap();

        let connection = open_existing(&path).unwrap();

        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let indexes: Vec<String> = connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            indexes,
            ["deliveries_duplicates", "deliveries_not_stored", "deliveries_received", "deliveries_source"]
        );
    }

    /// Reading the window back when serve starts runs inside the writer's
    /// first transaction, so it must read the range through
    /// deliveries_received, not the whole table.
    #[test]
    fn window_read_uses_received_index() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let plan: Vec<String> = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {LOAD_SQL}"))
            .unwrap()
            .query_map(params!["2026-03-01T14:00:00.000Z", "2026-03-02T14:00:00.000Z"], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(plan.iter().any(|step| step.contains("deliveries_received")), "plan: {plan:?}");
        assert!(!plan.iter().any(|step| step.starts_with("SCAN deliveries") && !step.contains("INDEX")), "plan: {plan:?}");
    }

    /// Reading an older range after a newer one (an import going back in
    /// time) meets a body whose short fingerprint is already in the map
    /// for a newer body. The older body must still be found, or its retry
    /// is stored as a new delivery.
    #[test]
    fn older_range_keeps_shared_fingerprint() {
        let (older, newer) = links_sharing_short_fingerprint();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        // serve: the two bodies that share a short fingerprint, 90 s apart.
        let served = {
            let mut connection = open_or_create(&path).unwrap();
            write(
                &mut connection,
                &mut RecentBodies::new(60_000),
                &[click(&older, "2026-03-01T14:00:00.000Z"), click(&newer, "2026-03-01T14:01:30.000Z")],
            )
        };

        // import: a body that reads the newer range into the map, one that
        // reads the older range, then a retry of the older body 50 s after it.
        let mut connection = open_existing(&path).unwrap();
        let imported = write(
            &mut connection,
            &mut RecentBodies::new(60_000),
            &[
                click("other-1", "2026-03-01T14:01:40.000Z"),
                click("other-2", "2026-03-01T14:00:20.000Z"),
                click(&older, "2026-03-01T14:00:50.000Z"),
            ],
        );

        assert_eq!(imported[2].duplicate_of, Some(served[0].id));
    }

    /// Two bodies whose short fingerprints are equal are both found.
    #[test]
    fn shared_fingerprint_keeps_both_bodies() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA_SQL).unwrap();
        let mut recent = RecentBodies::new(60_000);
        let (first, second) = links_sharing_short_fingerprint();
        let receipts = write(
            &mut connection,
            &mut recent,
            &[
                click(&first, "2026-03-01T14:00:00.000Z"),
                click(&second, "2026-03-01T14:00:01.000Z"),
                click(&first, "2026-03-01T14:00:02.000Z"),
                click(&second, "2026-03-01T14:00:03.000Z"),
            ],
        );

        assert_eq!(receipts[1].duplicate_of, None);
        assert_eq!(receipts[2].duplicate_of, Some(receipts[0].id));
        assert_eq!(receipts[3].duplicate_of, Some(receipts[1].id));
    }
}
