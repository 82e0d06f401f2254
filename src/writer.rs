//! The writer: one thread that owns the write connection and commits
//! deliveries in groups.
//!
//! Request handlers parse a delivery, hand it over with `WriterHandle::write`
//! and wait. The writer takes every delivery waiting at that moment (up to
//! `max_batch`), writes them in one IMMEDIATE transaction, commits with
//! synchronous=FULL, and only then wakes each handler. One fsync thus
//! covers many deliveries, yet a lone delivery on an idle server is written
//! at once, never held back waiting for company.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{error, info, warn};
use rusqlite::{Connection, TransactionBehavior};

use crate::store::{self, Delivery, Receipt};

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most deliveries committed in one transaction.
    pub max_batch: usize,
    /// How far back an identical body makes a delivery a duplicate, in ms.
    pub duplicate_window_ms: i64,
    /// Maximum time a handler waits for its commit before responding 503.
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
        let failure = Arc::new(Mutex::new(None));
        let handle = WriterHandle { sender, reply_timeout: config.reply_timeout, failure: Arc::clone(&failure) };
        let thread = thread::Builder::new().name("writer".to_string()).spawn(move || {
            let outage = Outage { failure, ..Outage::default() };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(connection, receiver, config, observer, outage)
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

fn run(
    mut connection: Connection,
    receiver: Receiver<Message>,
    config: WriterConfig,
    observer: BatchObserver,
    mut outage: Outage,
) {
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

        write_jobs(&mut connection, jobs, config.duplicate_window_ms, &observer, &mut outage);
    }

    // Deliveries queued behind the stop message still get written.
    while let Ok(Message::Write(job)) = receiver.try_recv() {
        write_jobs(&mut connection, vec![job], config.duplicate_window_ms, &observer, &mut outage);
    }
    match connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0)) {
        Ok(0) => info!("checkpointed the WAL into the database file"),
        Ok(_) => warn!("WAL checkpoint incomplete: a reader still holds it"),
        Err(cause) => warn!("WAL checkpoint failed: {cause}"),
    }
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

/// Commits `jobs` in one transaction and sends each its result. When the batch fails
/// for a reason that may lie in one delivery, each job is retried alone, so
/// one delivery that cannot be written does not take the others down with
/// it.
fn write_jobs(
    connection: &mut Connection,
    jobs: Vec<Job>,
    window_ms: i64,
    observer: &BatchObserver,
    outage: &mut Outage,
) {
    let deliveries: Vec<&Delivery> = jobs.iter().map(|job| &job.delivery).collect();
    match commit(connection, &deliveries, window_ms) {
        Ok(receipts) => {
            outage.record_success();
            observer(jobs.len());
            for (job, receipt) in jobs.into_iter().zip(receipts) {
                // The handler may have timed out and left; nothing to tell it.
                let _ = job.reply.send(Ok(receipt));
            }
        }
        Err(cause) if jobs.len() > 1 && !is_store_wide(&cause) => {
            warn!("batch of {} deliveries failed, retrying one by one: {cause}", jobs.len());
            for job in jobs {
                write_jobs(connection, vec![job], window_ms, observer, outage);
            }
        }
        Err(cause) => {
            for job in jobs {
                outage.record_failure(&job.delivery, &cause);
                // As above, the handler may have left.
                let _ = job.reply.send(Err(format!("store unavailable: {cause}")));
            }
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
