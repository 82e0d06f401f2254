//! The writer: one thread that owns the write connection and commits
//! deliveries in groups, and a second thread that makes those commits
//! durable before their handlers respond.
//!
//! Request handlers parse a delivery and hand it over with
//! `WriterHandle::submit`, with the reply to call once it is on disk. The
//! writer takes every delivery waiting at that moment (up to `max_batch`),
//! writes them in one IMMEDIATE transaction and commits. One fsync thus
//! covers many deliveries, yet a lone delivery on an idle server is written
//! at once, never held back waiting for company.
//!
//! # Durability: the same promise as synchronous=FULL, with the fsync moved
//!
//! With synchronous=FULL, SQLite calls fsync on the WAL inside every
//! COMMIT, and the writer could start nothing else until the fsync
//! returned. About a third of its time went into that wait. Here the write connection
//! uses synchronous=NORMAL, so COMMIT writes the transaction's frames to
//! the WAL without waiting for the disk, and the writer hands the batch to
//! the syncer thread. The syncer calls fdatasync on the WAL file and only
//! then wakes the batch's handlers, while the writer already commits the
//! next batch. A 2xx response therefore still means "the frames holding this
//! delivery, commit record included, were on disk": on restart after a
//! power loss SQLite replays every commit whose frames are intact.
//!
//! The rest of what FULL does is unchanged under NORMAL in WAL mode. SQLite
//! syncs the WAL header when it starts the log over. A checkpoint syncs the
//! WAL before copying pages into the database file, and syncs the file
//! after. So frames overwritten by a restarted WAL were already in a synced
//! database file. One fdatasync covers every batch committed before it
//! started, so under load each call acknowledges several batches.
//!
//! A failed fdatasync answers its batches 503 and ends the process with
//! status 74: after such a failure Linux may report the next sync as a
//! success although the failed writes were dropped, so nothing written to
//! the file since could be acknowledged safely. The service manager starts
//! dsevents again, and SQLite recovers the WAL from what the disk holds.
//!
//! # Checkpoints
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL
//! past its threshold, and copied about 1000 pages into the database file
//! while every handler of that batch waited. Here a checkpointer thread
//! with its own connection does that copying in the background, and once
//! the WAL holds `WAL_RESTART_PAGES` it asks the writer to complete the
//! checkpoint between two batches, which leaves the writer only the pages
//! committed since, and lets the WAL start over. The automatic checkpoint
//! stays as a bound at `WAL_LIMIT_PAGES`, should background checkpoints
//! fall behind.
//!
//! Every request waits while the writer checkpoints, and the time goes
//! into the two syncs of a checkpoint, not into copying: under load a
//! checkpoint of 30 pages took as long as one of 1700, from 2 to 20 ms.
//! So the WAL starts over rarely, at 64 MiB, and the checkpointer first
//! repeats its pass until little is left for the writer.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use rusqlite::{Connection, TransactionBehavior};

use crate::store::{self, Delivery, Receipt, RecentBodies};

/// WAL pages from which the WAL is started over. Once a background
/// checkpoint has copied this many, the writer completes the checkpoint
/// itself, copying only the pages committed meanwhile. Its next transaction
/// then writes from the beginning of the WAL. 64 MiB with 4 KiB pages.
/// At 4000 pages and without the catch-up passes of `checkpoint_loop`, the
/// p99 latency was 12.1 to 13.3 ms in three runs, against 8.7 to 12.2 ms
/// with both (BENCHMARKS.md).
const WAL_RESTART_PAGES: i64 = 16000;

/// WAL pages at which SQLite's automatic checkpoint runs on the writer,
/// after the commit that reaches them, copying whatever the background
/// checkpoints have not. It is reached only when they fall behind. About
/// 80 MiB, below journal_size_limit.
const WAL_LIMIT_PAGES: i64 = 20000;

/// Pages a background checkpoint pass may find to copy and still be the
/// last before the writer's: the writer then copies about as many, in a
/// few milliseconds, while every request waits. 1 MiB with 4 KiB pages.
const RESTART_BACKLOG_PAGES: i64 = 256;

/// Maximum background checkpoint passes in a row before the writer's, should
/// commits outpace them.
const CATCH_UP_PASSES: u32 = 8;

/// Shortest time between two background checkpoints.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(40);

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most deliveries committed in one transaction.
    pub max_batch: usize,
    /// How far back an identical body makes a delivery a duplicate, in ms.
    pub duplicate_window_ms: i64,
}

/// Receives the size of every committed batch, for metrics.
pub type BatchObserver = Box<dyn Fn(usize) + Send>;

enum Message {
    Write(Job),
    Stop,
}

/// The callback that receives the result of a delivery. It is called once,
/// on the writer's or the syncer's thread, with the receipt once the
/// delivery is on disk, or with the reason it must not be acknowledged.
pub type Reply = Box<dyn FnOnce(Result<Receipt, String>) + Send>;

struct Job {
    delivery: Delivery,
    reply: Reply,
}

/// The sending side, cloned into every request handler.
#[derive(Clone)]
pub struct WriterHandle {
    sender: Sender<Message>,
    failure: Arc<Mutex<Option<String>>>,
}

impl WriterHandle {
    /// Returns the reason writes are failing now, or None while the last
    /// commit succeeded.
    pub fn failure(&self) -> Option<String> {
        match self.failure.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Queues a delivery for the writer, which calls `reply` once it is
    /// committed and on disk, or failed. An `Err` is the reason it could not
    /// be queued; `reply` is not called then.
    pub fn submit(&self, delivery: Delivery, reply: Reply) -> Result<(), String> {
        self.sender
            .send(Message::Write(Job { delivery, reply }))
            .map_err(|_| "store unavailable: the writer has stopped".to_string())
    }
}

/// The writer thread.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer, syncer and checkpointer threads on `connection`.
    pub fn start(connection: Connection, config: WriterConfig, observer: BatchObserver) -> anyhow::Result<Writer> {
        // See the module comment: the syncer thread makes each commit
        // durable before it is acknowledged.
        connection.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = {WAL_LIMIT_PAGES}; PRAGMA cache_size = -1000;"
        ))?;
        let wal = WalFile::of_database(&connection)?;
        let checkpoints = store::open_existing(wal.database())?;
        // A checkpoint copies pages through a buffer of its own, not the cache.
        checkpoints.execute_batch("PRAGMA cache_size = -256")?;
        // Not bounded here: a connection waits for the answer to its
        // delivery before it sends the next, so the connection limit
        // bounds the queue.
        let (sender, receiver) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let handle = WriterHandle { sender, failure: Arc::clone(&failure) };

        let (kick, kicks) = mpsc::sync_channel(1);
        // Set by the checkpointer when the writer should start the WAL over.
        let restart = Arc::new(AtomicBool::new(false));
        let copied = Arc::clone(&restart);
        let checkpoint_failure = Arc::clone(&failure);
        let checkpointer = thread::Builder::new()
            .name("checkpointer".to_string())
            .spawn(move || checkpoint_loop(checkpoints, kicks, copied, checkpoint_failure))?;
        let (to_syncer, syncer_inbox) = mpsc::channel();
        let syncer_failure = Arc::clone(&failure);
        let syncer = thread::Builder::new()
            .name("syncer".to_string())
            .spawn(move || sync_loop(wal, syncer_inbox, syncer_failure, kick))?;

        let thread = thread::Builder::new().name("writer".to_string()).spawn(move || {
            let outage = Outage { failure, ..Outage::default() };
            let helpers = Helpers { to_syncer, threads: [syncer, checkpointer], restart };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(connection, receiver, helpers, config, observer, outage)
            }));
            if result.is_err() {
                // Without the writer every delivery would get 503 while the
                // process looks alive; exiting lets the service manager
                // restart it. Unanswered deliveries are retried by DailyStory.
                error!("the writer thread panicked; exiting so that dsevents is restarted");
                std::process::exit(70);
            }
        })?;
        Ok(Writer { handle, thread: Some(thread) })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Writes what is queued, checkpoints the WAL into the database file and
    /// stops the thread.
    pub fn stop(mut self) {
        // The thread may already have ended; then there is nothing to stop.
        let _ = self.handle.sender.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("the writer thread panicked");
            }
        }
    }
}

/// A delivery committed but not yet known to be on disk.
struct Committed {
    reply: Reply,
    receipt: Receipt,
}

/// The writer's links to the syncer and checkpointer threads.
struct Helpers {
    to_syncer: Sender<Vec<Committed>>,
    threads: [JoinHandle<()>; 2],
    /// Set by the checkpointer when the WAL should start over.
    restart: Arc<AtomicBool>,
}

fn run(
    mut connection: Connection,
    receiver: Receiver<Message>,
    helpers: Helpers,
    config: WriterConfig,
    observer: BatchObserver,
    mut outage: Outage,
) {
    let mut recent = RecentBodies::new(config.duplicate_window_ms);
    let mut stopping = false;
    while !stopping {
        let first = match receiver.recv() {
            Ok(Message::Write(job)) => job,
            Ok(Message::Stop) | Err(_) => break,
        };

        let mut jobs = vec![first];
        while jobs.len() < config.max_batch {
            match receiver.try_recv() {
                Ok(Message::Write(job)) => jobs.push(job),
                Ok(Message::Stop) => {
                    stopping = true;
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }

        let committed = write_jobs(&mut connection, jobs, &mut recent, &observer, &mut outage);
        hand_over(&helpers.to_syncer, committed);
        if helpers.restart.swap(false, Ordering::Relaxed) {
            // After the hand-over, so that the batch just committed does not
            // wait for it. A failure leaves the WAL to SQLite's automatic
            // checkpoint.
            match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                Ok(()) => {}
                Err(cause) if is_failed_sync(&cause) => {
                    let reason = format!("store unavailable: a checkpoint could not sync the database to disk: {cause}");
                    stop_after_failed_sync(reason, Vec::new(), &outage.failure);
                }
                Err(cause) => warn!("checkpoint to start the WAL over failed: {cause}"),
            }
        }
    }

    // Deliveries queued behind the stop message still get written.
    while let Ok(Message::Write(job)) = receiver.try_recv() {
        let committed = write_jobs(&mut connection, vec![job], &mut recent, &observer, &mut outage);
        hand_over(&helpers.to_syncer, committed);
    }
    // The syncer responds to what it has and ends once its inbox closes.
    // The checkpointer ends with it.
    let Helpers { to_syncer, threads, .. } = helpers;
    drop(to_syncer);
    for helper in threads {
        if helper.join().is_err() {
            error!("a thread of the writer panicked");
        }
    }
    match connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0)) {
        Ok(0) => info!("checkpointed the WAL into the database file"),
        Ok(_) => warn!("WAL checkpoint incomplete: a reader still holds it"),
        Err(cause) => warn!("WAL checkpoint failed: {cause}"),
    }
}

fn hand_over(to_syncer: &Sender<Vec<Committed>>, committed: Vec<Committed>) {
    if committed.is_empty() {
        return;
    }
    if let Err(mpsc::SendError(unsynced)) = to_syncer.send(committed) {
        // Only if the syncer thread panicked. Not known to be on disk, so
        // not acknowledged; DailyStory retries.
        for entry in unsynced {
            (entry.reply)(Err("store unavailable: the WAL could not be synced".to_string()));
        }
    }
}

/// The database's WAL file, opened a second time so that the syncer can
/// call fdatasync on it while the writer goes on writing.
struct WalFile {
    database: PathBuf,
    path: PathBuf,
    /// The open file and its device and inode numbers.
    open: Option<(File, u64, u64)>,
}

impl WalFile {
    fn of_database(connection: &Connection) -> anyhow::Result<WalFile> {
        let Some(database) = connection.path().filter(|path| !path.is_empty()) else {
            anyhow::bail!("the writer needs a database file, not an in-memory database");
        };
        Ok(WalFile { database: PathBuf::from(database), path: PathBuf::from(format!("{database}-wal")), open: None })
    }

    /// Returns the database file the WAL belongs to.
    fn database(&self) -> &Path {
        &self.database
    }

    /// Flushes everything written to the WAL so far to the disk. Opens the
    /// file again if it was replaced (SQLite removes it only when the last
    /// connection closes, but another program could).
    fn sync(&mut self) -> std::io::Result<()> {
        let current = std::fs::metadata(&self.path)?;
        let reopen = !matches!(&self.open, Some((_, dev, ino)) if *dev == current.dev() && *ino == current.ino());
        if reopen {
            self.open = Some(open_for_sync(&self.path)?);
        }
        match &self.open {
            Some((file, _, _)) => file.sync_data(),
            None => unreachable!("opened above"),
        }
    }
}

fn open_for_sync(path: &Path) -> std::io::Result<(File, u64, u64)> {
    let file = File::open(path)?;
    let metadata = file.metadata()?;
    Ok((file, metadata.dev(), metadata.ino()))
}

/// Runs the checkpointer thread. After the syncer's fsyncs, at most once
/// per `CHECKPOINT_INTERVAL`, it copies the WAL into the database file with
/// a PASSIVE checkpoint on a connection of its own, while the writer goes
/// on committing.
///
/// Once the WAL contains `WAL_RESTART_PAGES`, it repeats the checkpoint at
/// once, each pass copying only what was committed during the one before,
/// until a pass has at most `RESTART_BACKLOG_PAGES` to copy. Then it sets
/// `restart`, and the writer's own checkpoint has about as few pages left:
/// every request waits while the writer copies them.
fn checkpoint_loop(
    connection: Connection,
    kicks: Receiver<()>,
    restart: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let mut failing = false;
    // While catching up: WAL pages at the end of the previous pass, and the
    // number of passes so far.
    let mut catching_up: Option<(i64, u32)> = None;
    loop {
        if catching_up.is_none() && kicks.recv().is_err() {
            return;
        }
        let started = Instant::now();
        // busy, pages in the WAL, pages copied into the database file
        let result = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match result {
            Ok((busy, pages, copied)) => {
                if failing {
                    info!("background checkpoints succeed again");
                    failing = false;
                }
                let complete = busy == 0 && copied == pages;
                catching_up = match catching_up {
                    _ if !complete || pages < WAL_RESTART_PAGES => None,
                    Some((before, passes)) if pages - before <= RESTART_BACKLOG_PAGES || passes >= CATCH_UP_PASSES => {
                        restart.store(true, Ordering::Relaxed);
                        None
                    }
                    Some((_, passes)) => Some((pages, passes + 1)),
                    None => Some((pages, 1)),
                };
                if catching_up.is_some() {
                    continue;
                }
            }
            Err(cause) if is_failed_sync(&cause) => {
                let reason = format!("store unavailable: a checkpoint could not sync the database to disk: {cause}");
                stop_after_failed_sync(reason, Vec::new(), &failure);
            }
            Err(cause) => {
                catching_up = None;
                if !failing {
                    warn!("background checkpoint failed, the writer checkpoints alone: {cause}");
                    failing = true;
                }
            }
        }
        thread::sleep(CHECKPOINT_INTERVAL.saturating_sub(started.elapsed()));
    }
}

/// Runs the syncer thread. It takes every committed batch waiting, syncs
/// the WAL once for all of them, then wakes their handlers.
fn sync_loop(
    mut wal: WalFile,
    inbox: Receiver<Vec<Committed>>,
    failure: Arc<Mutex<Option<String>>>,
    checkpointer: SyncSender<()>,
) {
    while let Ok(mut committed) = inbox.recv() {
        while let Ok(more) = inbox.try_recv() {
            committed.extend(more);
        }
        if let Err(cause) = wal.sync() {
            let reason = format!("store unavailable: cannot sync {} to disk: {cause}", wal.path.display());
            stop_after_failed_sync(reason, committed.into_iter().map(|entry| entry.reply).collect(), &failure);
        }
        for entry in committed {
            (entry.reply)(Ok(entry.receipt));
        }
        // Full when the checkpointer has a request pending already.
        let _ = checkpointer.try_send(());
    }
}

/// Exit status after a failed WAL sync: EX_IOERR from sysexits.h.
const EXIT_SYNC_FAILED: i32 = 74;

/// Responds 503 to `replies` and ends the process. After an fsync fails,
/// Linux may drop the pages it could not write and report the next sync
/// as a success, so no later commit could be trusted to be on disk. The
/// service manager restarts dsevents, SQLite recovers the WAL from what
/// the disk holds, and DailyStory retries every delivery that got no 2xx,
/// including those that arrive in the moments before the exit and get no
/// response at all.
fn stop_after_failed_sync(reason: String, replies: Vec<Reply>, failure: &Mutex<Option<String>>) -> ! {
    set_failure(failure, Some(reason.clone()));
    error!("{reason}; exiting with status {EXIT_SYNC_FAILED}, because later syncs of this file cannot be trusted");
    for reply in replies {
        reply(Err(reason.clone()));
    }
    // Time for the handlers to send those 503 responses.
    thread::sleep(Duration::from_millis(200));
    std::process::exit(EXIT_SYNC_FAILED);
}

/// Returns true when SQLite failed to sync a file, in a commit or a
/// checkpoint: the same condition as a failed fdatasync in the syncer.
fn is_failed_sync(cause: &rusqlite::Error) -> bool {
    matches!(
        cause,
        rusqlite::Error::SqliteFailure(error, _)
            if error.extended_code == rusqlite::ffi::SQLITE_IOERR_FSYNC
                || error.extended_code == rusqlite::ffi::SQLITE_IOERR_DIR_FSYNC
    )
}

/// A run of failed writes, logged when it starts or its cause changes and
/// once when it ends, so that a full disk does not flood the log with one
/// line per delivery.
#[derive(Default)]
struct Outage {
    /// Deliveries that got a 503 response since the last successful commit.
    refused: usize,
    /// The cause last logged.
    cause: String,
    /// The current failure, shared with `WriterHandle::failure`.
    failure: Arc<Mutex<Option<String>>>,
}

impl Outage {
    fn record_failure(&mut self, delivery: &Delivery, cause: &rusqlite::Error) {
        let cause = cause.to_string();
        if self.refused == 0 || cause != self.cause {
            error!(
                "delivery not stored, responding 503 until writes succeed again: kind={} bytes={} cause={cause}",
                delivery.kind,
                delivery.body.len()
            );
            set_failure(&self.failure, Some(format!("store unavailable: {cause}")));
            self.cause = cause;
        }
        self.refused += 1;
    }

    fn record_success(&mut self) {
        if self.refused > 0 {
            info!("writes succeed again after {} deliveries got a 503 response", self.refused);
            self.refused = 0;
            set_failure(&self.failure, None);
        }
    }
}

fn set_failure(failure: &Mutex<Option<String>>, value: Option<String>) {
    match failure.lock() {
        Ok(mut guard) => *guard = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

/// Returns true for errors that concern the whole store rather than one
/// delivery: a full disk, a read-only or missing file, an I/O error, or a
/// lock held past the busy timeout. Retrying the deliveries of a batch one
/// by one cannot help then, and would make each wait out the busy timeout.
fn is_store_wide(cause: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        cause.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::PermissionDenied
                | ErrorCode::OutOfMemory
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::NotADatabase
        )
    )
}

/// Commits `jobs` in one transaction. Returns the committed deliveries,
/// which the syncer acknowledges once they are on disk, and responds 503
/// to the others here. When the batch fails for a reason that may lie in one
/// delivery, each job is retried alone, so one delivery that cannot be
/// written does not take the others down with it.
fn write_jobs(
    connection: &mut Connection,
    jobs: Vec<Job>,
    recent: &mut RecentBodies,
    observer: &BatchObserver,
    outage: &mut Outage,
) -> Vec<Committed> {
    let deliveries: Vec<&Delivery> = jobs.iter().map(|job| &job.delivery).collect();
    match commit(connection, &deliveries, recent) {
        Ok(receipts) => {
            outage.record_success();
            observer(jobs.len());
            jobs.into_iter().zip(receipts).map(|(job, receipt)| Committed { reply: job.reply, receipt }).collect()
        }
        Err(cause) if jobs.len() > 1 && !is_store_wide(&cause) => {
            warn!("batch of {} deliveries failed, retrying one by one: {cause}", jobs.len());
            let mut committed = Vec::with_capacity(jobs.len());
            for job in jobs {
                committed.extend(write_jobs(connection, vec![job], recent, observer, outage));
            }
            committed
        }
        Err(cause) if is_failed_sync(&cause) => {
            let reason = format!("store unavailable: SQLite could not sync the database to disk: {cause}");
            stop_after_failed_sync(reason, jobs.into_iter().map(|job| job.reply).collect(), &outage.failure);
        }
        Err(cause) => {
            for job in jobs {
                outage.record_failure(&job.delivery, &cause);
                (job.reply)(Err(format!("store unavailable: {cause}")));
            }
            Vec::new()
        }
    }
}

fn commit(connection: &mut Connection, deliveries: &[&Delivery], recent: &mut RecentBodies) -> rusqlite::Result<Vec<Receipt>> {
    let result = (|| {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut receipts = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            receipts.push(store::insert_delivery(&tx, delivery, recent)?);
        }
        tx.commit()?;
        Ok(receipts)
    })();
    match result {
        Ok(_) => recent.commit(),
        Err(_) => recent.roll_back(),
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Creates a database file with the schema. Returns the writer's
    /// connection and a second one that reads only committed rows.
    fn database() -> (tempfile::TempDir, Connection, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let writer = store::open_or_create(&path).unwrap();
        let reader = store::open_existing(&path).unwrap();
        (dir, writer, reader)
    }

    fn delivery(body: &str) -> Delivery {
        Delivery::new("link-clicked", body.as_bytes().to_vec(), None, crate::time::now_text())
    }

    /// Builds a job and the receiver of its reply.
    fn job(body: &str) -> (Job, Receiver<Result<Receipt, String>>) {
        let (reply, answer) = mpsc::sync_channel(1);
        let reply: Reply = Box::new(move |result| reply.send(result).unwrap());
        (Job { delivery: delivery(body), reply }, answer)
    }

    /// Sends each committed delivery its result, as the syncer does after
    /// its fsync.
    fn acknowledge(committed: Vec<Committed>) {
        for entry in committed {
            (entry.reply)(Ok(entry.receipt));
        }
    }

    fn recorder() -> (Arc<Mutex<Vec<usize>>>, BatchObserver) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&sizes);
        (sizes, Box::new(move |size| recorded.lock().unwrap().push(size)))
    }

    fn committed_bodies(reader: &Connection) -> Vec<String> {
        reader
            .prepare("SELECT CAST(body AS TEXT) FROM deliveries ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn batch_commits_together() {
        let (_dir, mut writer, reader) = database();
        let (sizes, observer) = recorder();
        let (jobs, answers): (Vec<_>, Vec<_>) = (0..5).map(|n| job(&format!(r#"{{"id":"lnk-{n}"}}"#))).unzip();

        acknowledge(write_jobs(&mut writer, jobs, &mut RecentBodies::new(0), &observer, &mut Outage::default()));

        let ids: Vec<i64> = answers.iter().map(|answer| answer.try_recv().unwrap().unwrap().id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(*sizes.lock().unwrap(), vec![5]);
        assert_eq!(committed_bodies(&reader).len(), 5);
    }

    /// One delivery that the store rejects fails its batch. The others are
    /// then committed one by one, and only they are acknowledged.
    #[test]
    fn failed_batch_answers_each_delivery() {
        let (_dir, mut writer, reader) = database();
        reader
            .execute_batch(
                "CREATE TRIGGER reject_marked BEFORE INSERT ON deliveries
                   WHEN instr(CAST(NEW.body AS TEXT), 'reject-me') > 0
                 BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;",
            )
            .unwrap();
        let (sizes, observer) = recorder();
        let bodies = [r#"{"id":"a"}"#, r#"{"id":"reject-me-1"}"#, r#"{"id":"b"}"#, r#"{"id":"reject-me-2"}"#];
        let (jobs, answers): (Vec<_>, Vec<_>) = bodies.iter().map(|body| job(body)).unzip();

        acknowledge(write_jobs(&mut writer, jobs, &mut RecentBodies::new(0), &observer, &mut Outage::default()));

        let results: Vec<Result<Receipt, String>> = answers.iter().map(|answer| answer.try_recv().unwrap()).collect();
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(results[2].is_ok(), "{:?}", results[2]);
        for failed in [&results[1], &results[3]] {
            let reason = failed.as_ref().unwrap_err();
            assert!(reason.starts_with("store unavailable: "), "{reason}");
            assert!(reason.contains("simulated write failure"), "{reason}");
        }
        assert_eq!(committed_bodies(&reader), vec![bodies[0], bodies[2]]);
        assert_eq!(*sizes.lock().unwrap(), vec![1, 1]);
    }

    /// A full disk fails every delivery of the batch, and each handler gets
    /// the reason. Nothing is acknowledged.
    #[test]
    fn full_disk_fails_whole_batch() {
        let (_dir, mut writer, reader) = database();
        // SQLite returns SQLITE_FULL as soon as the file would need a page
        // beyond this limit, as it does when the disk is full.
        let pages: i64 = writer.query_row("PRAGMA page_count", [], |row| row.get(0)).unwrap();
        writer.execute_batch(&format!("PRAGMA max_page_count = {pages}")).unwrap();
        let (sizes, observer) = recorder();
        let large = format!(r#"{{"id":"lnk-1","padding":"{}"}}"#, "x".repeat(20_000));
        let (jobs, answers): (Vec<_>, Vec<_>) = (0..3).map(|_| job(&large)).unzip();

        let committed = write_jobs(&mut writer, jobs, &mut RecentBodies::new(0), &observer, &mut Outage::default());

        assert!(committed.is_empty());
        for answer in &answers {
            let reason = answer.try_recv().unwrap().unwrap_err();
            assert!(reason.starts_with("store unavailable: "), "{reason}");
            assert!(reason.contains("full"), "{reason}");
        }
        assert!(committed_bodies(&reader).is_empty());
        assert!(sizes.lock().unwrap().is_empty());
    }

    /// A delivery that arrives alone is committed alone and at once, so the
    /// writer does not wait for others to fill a batch.
    #[test]
    fn lone_delivery_committed_alone() {
        let (_dir, writer, reader) = database();
        let (sizes, observer) = recorder();
        let config = WriterConfig { max_batch: 64, duplicate_window_ms: 0 };
        let running = Writer::start(writer, config, observer).unwrap();
        let handle = running.handle();

        for n in 0..3 {
            let (reply, answer) = mpsc::sync_channel(1);
            handle
                .submit(
                    delivery(&format!(r#"{{"id":"lnk-{n}"}}"#)),
                    Box::new(move |result| reply.send(result).unwrap()),
                )
                .unwrap();
            let receipt = answer.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
            let visible: i64 = reader
                .query_row("SELECT count(*) FROM deliveries WHERE id = ?1", [receipt.id], |row| row.get(0))
                .unwrap();
            assert_eq!(visible, 1, "delivery {} acknowledged before it was visible", receipt.id);
        }
        running.stop();
        assert_eq!(*sizes.lock().unwrap(), vec![1, 1, 1]);
    }
}
