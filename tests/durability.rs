//! A delivery is acknowledged only once the WAL holding it is synced to
//! disk. `serve` commits with synchronous=NORMAL and syncs the WAL on a
//! second thread (see src/writer.rs), so these tests load a small library
//! into the real server with LD_PRELOAD (tests/support/sync_fault.c) that
//! delays or fails fdatasync and fsync on the WAL file, and check the
//! responses and exit status the sender and the service manager get.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;

/// Compiles tests/support/sync_fault.c into `dir` and returns the library.
fn build_fault_library(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/sync_fault.c");
    let library = dir.join("libsyncfault.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("run cc (the C compiler that builds the bundled SQLite) to build the fault library");
    assert!(status.success(), "cc failed to build {}", source.display());
    library
}

/// Starts `serve` with the fault library loaded. Files created in the
/// returned directory delay or fail its WAL syncs.
fn start_with_faults() -> (tempfile::TempDir, Server) {
    let faults = tempfile::tempdir().expect("create temp dir");
    let library = build_fault_library(faults.path());
    let server = Server::start_with_env(
        &[],
        &[("LD_PRELOAD", library.as_os_str()), ("SYNC_FAULT_DIR", faults.path().as_os_str())],
    );
    (faults, server)
}

fn opt_out(n: usize) -> String {
    format!(r#"{{"dsid":"sync-{n}","email":"sync{n}@example.com"}}"#)
}

#[test]
fn acknowledgement_waits_for_wal_sync() {
    let (faults, mut server) = start_with_faults();

    let first = server.post("/hooks/email-opt-out", opt_out(1).as_bytes());
    assert_eq!(first.status, 200, "{}", first.body);

    // A slow disk: the response comes only after the WAL sync returns.
    const DELAY: Duration = Duration::from_millis(400);
    std::fs::write(faults.path().join("delay_ms"), DELAY.as_millis().to_string()).unwrap();
    let started = Instant::now();
    let slow = server.post("/hooks/email-opt-out", opt_out(2).as_bytes());
    let took = started.elapsed();
    assert_eq!(slow.status, 200, "{}", slow.body);
    assert!(took >= DELAY, "answered after {took:?}, before the {DELAY:?} WAL sync ended");
    std::fs::remove_file(faults.path().join("delay_ms")).unwrap();

    // A failing disk: the delivery is committed but not known to be on
    // disk, so the sender gets 503 and retries. After a failed fsync Linux
    // may report later ones as successful although writes were lost, so
    // serve stops with status 74 rather than trust the file again.
    std::fs::write(faults.path().join("fail"), "").unwrap();
    let refused = server.post("/hooks/email-opt-out", opt_out(3).as_bytes());
    assert_eq!(refused.status, 503, "{}", refused.body);
    let reason = refused.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("cannot sync"), "{reason}");
    assert!(refused.header("Retry-After").is_some(), "503 without Retry-After");
    let status = server.wait_exit(Duration::from_secs(10)).expect("serve exits after a failed WAL sync");
    assert_eq!(status.code(), Some(74), "{status:?}");

    // The service manager starts it again. SQLite recovers the WAL, and
    // DailyStory's retry of the refused delivery is stored. If the refused
    // copy reached the disk after all, the retry is marked as its
    // duplicate, so reports count the opt-out once either way.
    server.restart(&[]);
    let retry = server.post("/hooks/email-opt-out", opt_out(3).as_bytes());
    assert_eq!(retry.status, 200, "{}", retry.body);
    let health = server.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(server.count("SELECT count(*) FROM opt_outs"), 3);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE outcome = 'stored'"), 4);
    let integrity: String = server.db().query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(integrity, "ok");
}

/// Once a background checkpoint has copied the whole WAL, the next commit
/// starts the WAL over and SQLite syncs its header on the writer's own
/// connection. When that sync fails, serve must stop with status 74 as it
/// does when the syncer's sync fails, not go on acknowledging deliveries
/// written after the failed header.
#[test]
fn failed_header_sync_stops_serve() {
    let (faults, mut server) = start_with_faults();
    let first = server.post("/hooks/email-opt-out", opt_out(1).as_bytes());
    assert_eq!(first.status, 200, "{}", first.body);
    // Time for the checkpointer to copy the WAL into the database file.
    std::thread::sleep(Duration::from_millis(500));

    std::fs::write(faults.path().join("fail"), "").unwrap();
    let refused = server.post("/hooks/email-opt-out", opt_out(2).as_bytes());
    assert_eq!(refused.status, 503, "{}", refused.body);
    std::fs::remove_file(faults.path().join("fail")).unwrap();

    // Even though the next sync would succeed, serve stops rather than
    // acknowledge anything more from this file.
    let status = server.wait_exit(Duration::from_secs(10)).expect("serve exits after a failed WAL sync");
    assert_eq!(status.code(), Some(74), "{status:?}");
}
