//! The writer: one thread that owns the write connection and commits
//! deliveries in groups.
//!
//! Request handlers parse a delivery, hand it over with `WriterHandle::write`
//! and wait. The writer takes every delivery waiting at that moment (up to
//! `max_batch`), writes them in one IMMEDIATE transaction, commits with
//! synchronous=FULL, and only then wakes each handler. One fsync thus
//! covers many deliveries, yet a lone delivery on an idle server is written
//! at once, never held back waiting for company.
//!
//! A `Checkpointer` thread copies committed WAL pages into the database file
//! on a connection of its own, so that this copying runs beside the writer
//! instead of inside one of its commits.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use rusqlite::{Connection, TransactionBehavior};

use crate::store::{self, Delivery, Receipt};

/// The shortest time between two checkpoints of the `Checkpointer`. In 5 s
/// load tests at 16 and 64 connections on two shared cores, 20 ms lowered
/// p99 latency by about a fifth and throughput by about a tenth against
/// 100 ms, and 5 ms halved p99 for about 15% of the throughput.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// The WAL size in pages past which the writer checkpoints after a commit
/// on its own connection, as SQLite does every 1000 pages by default. With
/// a `Checkpointer` running, this only bounds the WAL (40 MB with 4 KiB
/// pages) when the background checkpoints fall behind.
pub const WRITER_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most deliveries committed in one transaction.
    pub max_batch: usize,
    /// How far back an identical body makes a delivery a duplicate, in ms.
    pub duplicate_window_ms: i64,
    /// Longest a handler waits for its commit before answering 503.
    pub reply_timeout: Duration,
}

/// Receives the size of every committed batch, for metrics.
pub type BatchObserver = Box<dyn Fn(usize) + Send>;

enum Message {
    Write(Job),
    Stop,
}

struct Job {
    delivery: Delivery,
    reply: SyncSender<Result<Receipt, String>>,
}

/// The sending side, cloned into every request handler.
#[derive(Clone)]
pub struct WriterHandle {
    sender: SyncSender<Message>,
    reply_timeout: Duration,
}

impl WriterHandle {
    /// Writes a delivery and returns once it is committed. An `Err` is the
    /// one-line reason it was not: the delivery must not be acknowledged.
    pub fn write(&self, delivery: Delivery) -> Result<Receipt, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.sender
            .send(Message::Write(Job { delivery, reply }))
            .map_err(|_| "store unavailable: the writer has stopped".to_string())?;
        match answer.recv_timeout(self.reply_timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "store unavailable: the write was not committed within {} s",
                self.reply_timeout.as_secs()
            )),
            Err(RecvTimeoutError::Disconnected) => Err("store unavailable: the writer has stopped".to_string()),
        }
    }
}

/// The writer thread.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread on `connection`.
    pub fn start(connection: Connection, config: WriterConfig, observer: BatchObserver) -> std::io::Result<Writer> {
        // Bounded so that a stalled disk pushes back on handlers instead of
        // queueing without limit.
        let (sender, receiver) = mpsc::sync_channel(config.max_batch * 4);
        let handle = WriterHandle { sender, reply_timeout: config.reply_timeout };
        let thread = thread::Builder::new()
            .name("writer".to_string())
            .spawn(move || run(connection, receiver, config, observer))?;
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

/// A thread that runs a passive checkpoint after commits, at most once
/// every `CHECKPOINT_INTERVAL`, and sleeps while nothing is committed.
///
/// A passive checkpoint copies what it can without waiting for the writer
/// or for readers. SQLite syncs the database file before it marks pages as
/// copied, so a crash during a checkpoint loses no commit; tests/crash.rs
/// kills the server while this thread runs.
pub struct Checkpointer {
    signals: SyncSender<Signal>,
    thread: Option<JoinHandle<()>>,
}

enum Signal {
    Committed,
    Stop,
}

/// A handle that tells the `Checkpointer` the writer committed. It is cheap
/// enough to call after every transaction.
#[derive(Clone)]
pub struct CommitNotice(SyncSender<Signal>);

impl CommitNotice {
    pub fn committed(&self) {
        // Full means a checkpoint is already due, and Disconnected that the
        // checkpointer has stopped, so either way there is nothing to add.
        let _ = self.0.try_send(Signal::Committed);
    }
}

impl Checkpointer {
    /// Starts the thread on `connection`, a second connection to the
    /// writer's database.
    pub fn start(connection: Connection, interval: Duration) -> std::io::Result<Checkpointer> {
        let (signals, received) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name("checkpointer".to_string())
            .spawn(move || run_checkpoints(connection, received, interval))?;
        Ok(Checkpointer { signals, thread: Some(thread) })
    }

    /// Returns the handle the writer's observer calls after each commit.
    pub fn notice(&self) -> CommitNotice {
        CommitNotice(self.signals.clone())
    }

    /// Stops the thread after its current checkpoint.
    pub fn stop(mut self) {
        // The thread may already have ended; then there is nothing to stop.
        let _ = self.signals.send(Signal::Stop);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("the checkpointer thread panicked");
            }
        }
    }
}

fn run_checkpoints(connection: Connection, signals: Receiver<Signal>, interval: Duration) {
    let mut failures: u64 = 0;
    let mut pending = false;
    loop {
        if !pending {
            match signals.recv() {
                Ok(Signal::Committed) => {}
                Ok(Signal::Stop) | Err(_) => return,
            }
        }

        match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0)) {
            Ok(_) => failures = 0,
            Err(cause) => {
                failures += 1;
                // Logged at the first failure in a row and every 100th after,
                // not after every commit.
                if failures == 1 || failures % 100 == 0 {
                    warn!("background WAL checkpoint failed ({failures} in a row): {cause}");
                }
            }
        }

        // Wait out the interval so that a busy writer's commits are copied
        // in groups, remembering whether any arrived meanwhile.
        pending = false;
        let deadline = Instant::now() + interval;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match signals.recv_timeout(deadline - now) {
                Ok(Signal::Committed) => pending = true,
                Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
    }
}

fn run(mut connection: Connection, receiver: Receiver<Message>, config: WriterConfig, observer: BatchObserver) {
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

        write_jobs(&mut connection, jobs, config.duplicate_window_ms, &observer);
    }

    // Deliveries queued behind the stop message still get written.
    while let Ok(Message::Write(job)) = receiver.try_recv() {
        write_jobs(&mut connection, vec![job], config.duplicate_window_ms, &observer);
    }
    match connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0)) {
        Ok(0) => info!("checkpointed the WAL into the database file"),
        Ok(_) => warn!("WAL checkpoint incomplete: a reader still holds it"),
        Err(cause) => warn!("WAL checkpoint failed: {cause}"),
    }
}

/// Commits `jobs` in one transaction and answers each. When the batch fails,
/// each job is retried alone, so one delivery that cannot be written does
/// not take the others down with it.
fn write_jobs(connection: &mut Connection, jobs: Vec<Job>, window_ms: i64, observer: &BatchObserver) {
    let deliveries: Vec<&Delivery> = jobs.iter().map(|job| &job.delivery).collect();
    match commit(connection, &deliveries, window_ms) {
        Ok(receipts) => {
            observer(jobs.len());
            for (job, receipt) in jobs.into_iter().zip(receipts) {
                // The handler may have timed out and left; nothing to tell it.
                let _ = job.reply.send(Ok(receipt));
            }
        }
        Err(cause) if jobs.len() > 1 => {
            warn!("batch of {} deliveries failed, retrying one by one: {cause}", jobs.len());
            for job in jobs {
                write_jobs(connection, vec![job], window_ms, observer);
            }
        }
        Err(cause) => {
            let job = &jobs[0];
            error!(
                "delivery not stored, answered 503: kind={} bytes={} cause={cause}",
                job.delivery.kind,
                job.delivery.body.len()
            );
            let _ = job.reply.send(Err(format!("store unavailable: {cause}")));
        }
    }
}

fn commit(connection: &mut Connection, deliveries: &[&Delivery], window_ms: i64) -> rusqlite::Result<Vec<Receipt>> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut receipts = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        receipts.push(store::insert_delivery(&tx, delivery, window_ms)?);
    }
    tx.commit()?;
    Ok(receipts)
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
        (Job { delivery: delivery(body), reply }, answer)
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

        write_jobs(&mut writer, jobs, 0, &observer);

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

        write_jobs(&mut writer, jobs, 0, &observer);

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
        // SQLite answers SQLITE_FULL as soon as the file would need a page
        // beyond this limit, as it does when the disk is full.
        let pages: i64 = writer.query_row("PRAGMA page_count", [], |row| row.get(0)).unwrap();
        writer.execute_batch(&format!("PRAGMA max_page_count = {pages}")).unwrap();
        let (sizes, observer) = recorder();
        let large = format!(r#"{{"id":"lnk-1","padding":"{}"}}"#, "x".repeat(20_000));
        let (jobs, answers): (Vec<_>, Vec<_>) = (0..3).map(|_| job(&large)).unzip();

        write_jobs(&mut writer, jobs, 0, &observer);

        for answer in &answers {
            let reason = answer.try_recv().unwrap().unwrap_err();
            assert!(reason.starts_with("store unavailable: "), "{reason}");
            assert!(reason.contains("full"), "{reason}");
        }
        assert!(committed_bodies(&reader).is_empty());
        assert!(sizes.lock().unwrap().is_empty());
    }

    /// After commits, the checkpointer copies committed pages into the
    /// database file, which otherwise stays at the size the schema left it
    /// until the WAL reaches SQLite's automatic checkpoint (1000 pages, far
    /// more than these deliveries fill).
    #[test]
    fn checkpointer_copies_wal_into_file() {
        let (dir, writer, reader) = database();
        let path = dir.path().join("events.db");
        let size = || std::fs::metadata(&path).unwrap().len();
        let initial_size = size();
        let checkpointer = Checkpointer::start(store::open_existing(&path).unwrap(), Duration::from_millis(10)).unwrap();
        let notice = checkpointer.notice();
        let config = WriterConfig { max_batch: 64, duplicate_window_ms: 0, reply_timeout: Duration::from_secs(10) };
        let running = Writer::start(writer, config, Box::new(move |_| notice.committed())).unwrap();

        let handle = running.handle();
        for n in 0..50 {
            handle.write(delivery(&format!(r#"{{"id":"lnk-{n}"}}"#))).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while size() <= initial_size && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let grown_size = size();
        checkpointer.stop();
        running.stop();

        assert!(grown_size > initial_size, "database file still {grown_size} bytes, as it was before the writes");
        assert_eq!(committed_bodies(&reader).len(), 50);
    }

    /// A delivery that arrives alone is committed alone and at once, so the
    /// writer does not wait for others to fill a batch.
    #[test]
    fn lone_delivery_committed_alone() {
        let (_dir, writer, reader) = database();
        let (sizes, observer) = recorder();
        let config = WriterConfig { max_batch: 64, duplicate_window_ms: 0, reply_timeout: Duration::from_secs(10) };
        let running = Writer::start(writer, config, observer).unwrap();
        let handle = running.handle();

        for n in 0..3 {
            let receipt = handle.write(delivery(&format!(r#"{{"id":"lnk-{n}"}}"#))).unwrap();
            let visible: i64 =
                reader.query_row("SELECT count(*) FROM deliveries WHERE id = ?1", [receipt.id], |row| row.get(0)).unwrap();
            assert_eq!(visible, 1, "delivery {} acknowledged before it was visible", receipt.id);
        }
        running.stop();
        assert_eq!(*sizes.lock().unwrap(), vec![1, 1, 1]);
    }
}
