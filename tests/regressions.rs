//! Regression tests for defects found by trying the built binary as a
//! user would. Each test states the expected behaviour, so a failure
//! names the defect.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{describe, run, Server, BIN};

const OPT_IN: &[u8] = br#"{"dsid":"r1","email":"r1@example.com"}"#;

/// Starts `serve` with `extra` on a fresh database. Returns `Err` with the
/// exit code when it exits at once, as for a rejected option.
fn start_or_exit(extra: &[&str]) -> Result<(std::process::Child, String, tempfile::TempDir), Option<i32>> {
    let dir = tempfile::tempdir().expect("create temp dir");
    let db = dir.path().join("events.db");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .args(extra)
        .env_remove("DSEVENTS_TOKEN")
        .env_remove("DSEVENTS_DB")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dsevents serve");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    let _ = BufReader::new(stdout).read_line(&mut line);
    if line.is_empty() {
        return Err(child.wait().expect("wait for serve").code());
    }
    let address = line.trim().rsplit("http://").next().unwrap_or_default().to_string();
    Ok((child, address, dir))
}

/// Posts one delivery and returns the status line, or "" when the
/// connection ended without a response.
fn post_status_line(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        OPT_IN.len()
    );
    let _ = stream.write_all(request.as_bytes());
    let _ = stream.write_all(OPT_IN);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_string()
}

#[test]
fn zero_timeouts_rejected_or_served() {
    for option in ["--read-timeout", "--idle-timeout"] {
        match start_or_exit(&[option, "0"]) {
            Err(code) => assert_eq!(code, Some(2), "serve {option} 0 should exit 2 as a usage error"),
            Ok((mut child, address, _dir)) => {
                let status = post_status_line(&address, "/hooks/email-opt-in");
                let _ = child.kill();
                let _ = child.wait();
                assert!(status.contains(" 200 "), "serve {option} 0 dropped a delivery: status line {status:?}");
            }
        }
    }
}

#[test]
fn huge_duplicate_window_keeps_writer_alive() {
    match start_or_exit(&["--duplicate-window", "100000000d"]) {
        Err(code) => assert_eq!(code, Some(2), "an out-of-range window should exit 2"),
        Ok((mut child, address, _dir)) => {
            let status = post_status_line(&address, "/hooks/email-opt-in");
            let _ = child.kill();
            let _ = child.wait();
            assert!(status.contains(" 200 "), "first delivery got {status:?}");
        }
    }
}

#[test]
fn scheme_in_query_keeps_route() {
    let server = Server::start(&[]);
    let reply = server.post("/hooks/email-opt-in?src=https://app.example.com/x", OPT_IN);
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn huge_since_is_usage_error() {
    let server = Server::start(&[]);
    let db = server.db.to_str().expect("utf-8 path").to_string();
    for args in [
        vec!["query", "bounces", "--since", "99999999999d", "--db", &db],
        vec!["prune", "--raw-older-than", "9999999999w", "--dry-run", "--db", &db],
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{}", describe(&args, &output));
    }
}

#[test]
fn status_leaves_foreign_sqlite_file_alone() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("other.db");
    {
        let other = rusqlite::Connection::open(&path).expect("create other db");
        other.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY)").expect("create table");
    }
    let before = std::fs::read(&path).expect("read other db");
    let args = ["status", "--db", path.to_str().expect("utf-8 path")];
    let output = run(&args);
    let after = std::fs::read(&path).expect("read other db");
    let wal = dir.path().join("other.db-wal");
    assert!(before == after, "status changed a SQLite file that is not a dsevents database\n{}", describe(&args, &output));
    assert!(!wal.exists(), "status switched a foreign SQLite file to WAL\n{}", describe(&args, &output));
    assert_ne!(output.status.code(), Some(0), "{}", describe(&args, &output));
}

#[test]
fn duplicate_check_uses_fingerprint_index() {
    // 100k deliveries of one kind inside the duplicate window; a new
    // delivery of that kind should still commit in a few milliseconds.
    let server = Server::start(&[]);
    {
        let db = server.db();
        db.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             INSERT INTO deliveries (received_at, kind, body, body_bytes, body_sha256, content_type, outcome)
             SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'email-opt-in', 'x' || i, 5, randomblob(32),
                    'application/json', 'stored' FROM n",
        )
        .expect("seed deliveries");
    }
    let started = Instant::now();
    for index in 0..50 {
        let body = format!(r#"{{"dsid":"p{index}","email":"p{index}@example.com"}}"#);
        assert_eq!(server.post("/hooks/email-opt-in", body.as_bytes()).status, 200);
    }
    let per_delivery = started.elapsed() / 50;
    assert!(per_delivery < Duration::from_millis(10), "{per_delivery:?} per delivery with 100k same-kind rows in the window");
}

#[test]
fn escaped_and_uppercase_paths_route_to_kind() {
    let server = Server::start(&[]);
    for path in ["/hooks/email%2Dbounced", "/hooks/EMAIL-BOUNCED", "//hooks/email-bounced"] {
        let reply = server.post(path, br#"{"dsid":"p1","email":"p1@example.com"}"#);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(reply.json()["kind"], "email-bounced", "{path}");
    }
    assert_eq!(server.count("SELECT count(*) FROM email_bounces"), 3);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE kind <> 'email-bounced'"), 0);
}

#[test]
fn post_without_length_is_411() {
    let server = Server::start(&[]);
    let reply = server.send_raw(b"POST /hooks/email-opt-in HTTP/1.0\r\nHost: x\r\n\r\n{\"dsid\":\"r\"}");
    assert_eq!(reply.status, 411, "{}", reply.body);
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 0);
}

#[test]
fn encoded_body_kept_with_reason() {
    let server = Server::start(&[]);
    let reply = server.request("POST", "/hooks/email-opt-in", &[("Content-Encoding", "gzip")], b"\x1f\x8b\x08\x00");
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert!(reply.json()["reason"].as_str().unwrap().contains("Content-Encoding 'gzip' is not supported"));
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE body = x'1f8b0800'"), 1);
}

#[test]
fn placeholder_body_kept_out_of_reports() {
    let server = Server::start(&[]);
    let reply = server.post("/hooks/email-opt-out", br#"{"dsid":"","email":""}"#);
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["outcome"], "quarantined");
    assert_eq!(server.count("SELECT count(*) FROM opt_outs"), 0);
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 1);
}

#[test]
fn foreign_sqlite_file_is_refused_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("other.db");
    rusqlite::Connection::open(&db).unwrap().execute_batch("CREATE TABLE accounts (id INTEGER)").unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--db", db.to_str().unwrap()];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&args, &output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("another program"), "{}", describe(&args, &output));
    let tables: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |row| row.get(0))
        .unwrap();
    assert_eq!(tables, 1, "the file is left as it was");
}
