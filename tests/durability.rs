//! A delivery is acknowledged only once the WAL holding it is synced to
//! disk. `serve` commits with synchronous=NORMAL and syncs the WAL on a
//! second thread (see src/writer.rs), so these tests load a small library
//! into the real server with LD_PRELOAD (tests/support/sync_fault.c) that
//! delays or fails fdatasync and fsync on the WAL file, and check what the
//! sender sees.

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

fn opt_out(n: usize) -> String {
    format!(r#"{{"dsid":"sync-{n}","email":"sync{n}@example.com"}}"#)
}

#[test]
fn acknowledgement_waits_for_wal_sync() {
    let faults = tempfile::tempdir().expect("create temp dir");
    let library = build_fault_library(faults.path());
    let server = Server::start_with_env(
        &[],
        &[("LD_PRELOAD", library.as_os_str()), ("SYNC_FAULT_DIR", faults.path().as_os_str())],
    );

    let first = server.post("/hooks/email-opt-out", opt_out(1).as_bytes());
    assert_eq!(first.status, 200, "{}", first.body);

    // A slow disk: the answer comes only after the WAL sync returns.
    const DELAY: Duration = Duration::from_millis(400);
    std::fs::write(faults.path().join("delay_ms"), DELAY.as_millis().to_string()).unwrap();
    let started = Instant::now();
    let slow = server.post("/hooks/email-opt-out", opt_out(2).as_bytes());
    let took = started.elapsed();
    assert_eq!(slow.status, 200, "{}", slow.body);
    assert!(took >= DELAY, "answered after {took:?}, before the {DELAY:?} WAL sync ended");
    std::fs::remove_file(faults.path().join("delay_ms")).unwrap();

    // A failing disk: the delivery is committed but not known to be on
    // disk, so the sender gets 503 and retries, and /healthz says why.
    std::fs::write(faults.path().join("fail"), "").unwrap();
    let refused = server.post("/hooks/email-opt-out", opt_out(3).as_bytes());
    assert_eq!(refused.status, 503, "{}", refused.body);
    let reason = refused.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("cannot sync"), "{reason}");
    assert!(refused.header("Retry-After").is_some(), "503 without Retry-After");
    let health = server.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 503, "{}", health.body);
    std::fs::remove_file(faults.path().join("fail")).unwrap();

    // The disk recovers. DailyStory's retry of the refused delivery is
    // stored and marked as a duplicate of the copy committed before the
    // failed sync, so reports count the opt-out once.
    let retry = server.post("/hooks/email-opt-out", opt_out(3).as_bytes());
    assert_eq!(retry.status, 200, "{}", retry.body);
    let original = retry.json()["duplicate_of"].as_i64().expect("the retry names its original");
    let refused_copy: String = server
        .db()
        .query_row("SELECT CAST(body AS TEXT) FROM deliveries WHERE id = ?1", [original], |row| row.get(0))
        .expect("the refused copy is in the database");
    assert_eq!(refused_copy, opt_out(3));
    let health = server.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(server.count("SELECT count(*) FROM opt_outs"), 3);
}
