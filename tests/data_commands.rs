//! replay, import, backup, prune and forget through the real binary, on a
//! database that `serve` is writing to at the same time.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::{describe, run, Server};

/// Runs the binary and asserts it exits 0; returns stdout.
fn ok(args: &[&str]) -> String {
    let output = run(args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(args, &output));
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Posts deliveries from another thread until stopped. Returns how many got
/// a response, and panics on any status but 200.
fn background_load(server: &Server) -> (Arc<AtomicBool>, thread::JoinHandle<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let address = server.address;
    let flag = Arc::clone(&stop);
    let handle = thread::spawn(move || {
        let mut sent = 0u32;
        // Bounded: at most 2000 deliveries even if never stopped.
        while !flag.load(Ordering::SeqCst) && sent < 2000 {
            let body = format!(r#"{{"id":"link-{sent}"}}"#);
            let request = format!(
                "POST /hooks/link-clicked HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send");
            let reply = common::read_reply(&mut stream).expect("answer");
            assert_eq!(reply.status, 200, "background delivery: {}", reply.body);
            sent += 1;
        }
        sent
    });
    (stop, handle)
}

fn finish(load: (Arc<AtomicBool>, thread::JoinHandle<u32>)) -> u32 {
    load.0.store(true, Ordering::SeqCst);
    load.1.join().expect("background load")
}

#[test]
fn replay_moves_fixed_deliveries_to_stored_once() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    server.post("/hooks/email-opt-out", br#"{"dsid":"d1","email":"a@example.com"}"#);
    // As an older version would have left them: a valid body quarantined,
    // and a stored delivery whose normalized row is missing.
    server
        .db()
        .execute_batch(
            "UPDATE deliveries SET outcome = 'quarantined', error = 'old parser' WHERE id = 1;
             DELETE FROM email_opt_outs WHERE delivery_id = 1;",
        )
        .unwrap();
    let load = background_load(&server);

    let first = ok(&["replay", "--db", &db]);
    assert!(first.contains("1 changed (1 now stored"), "{first}");
    assert_eq!(server.count("SELECT count(*) FROM email_opt_outs WHERE delivery_id = 1"), 1);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE id = 1 AND outcome = 'stored' AND error IS NULL"), 1);

    let all = ok(&["replay", "--db", &db, "--all"]);
    assert!(all.contains(" 0 changed"), "{all}");
    let again = ok(&["replay", "--db", &db]);
    assert!(again.contains("replayed 0 deliveries"), "{again}");

    let sent = finish(load);
    assert_eq!(server.count("SELECT count(*) FROM link_clicks"), i64::from(sent));
    assert_eq!(server.count("SELECT count(*) FROM email_opt_outs"), 1, "no normalized row doubled");
}

#[test]
fn replay_rejects_unknown_kind() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap();
    let args = ["replay", "--db", db, "--kind", "email-bounce"];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&args, &output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("'email-bounce'"));
}

#[test]
fn import_keeps_invalid_lines_and_is_idempotent() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let file = server.dir.path().join("old.ndjson");
    std::fs::write(
        &file,
        concat!(
            "{\"dsid\":\"d1\",\"email\":\"a@example.com\",\"date\":\"2025-01-02T03:04:05\",\"reason\":\"x\"}\n",
            "{\"dsid\":\"d2\",\"email\":\"b@example.com\"\n",
            "\n",
            "{\"dsid\":\"d3\",\"email\":\"c@example.com\",\"is_spam_complaint\":\"true\"}\r\n",
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap().to_string();
    let load = background_load(&server);

    let args = ["import", "--db", &db, "--kind", "email-bounced", "--received-at-field", "date", &file];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&args, &output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("2 stored, 1 quarantined"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("old.ndjson:2:"), "invalid line reported with its number: {stderr}");

    assert_eq!(server.count("SELECT count(*) FROM email_bounces"), 2);
    assert_eq!(server.count("SELECT count(*) FROM email_bounces WHERE email = 'c@example.com' AND is_spam_complaint = 1"), 1);
    assert_eq!(
        server.count("SELECT count(*) FROM deliveries WHERE kind = 'email-bounced' AND received_at = '2025-01-02T03:04:05.000Z'"),
        1
    );
    let kept: String = server
        .db()
        .query_row("SELECT CAST(body AS TEXT) FROM deliveries WHERE outcome = 'quarantined' AND kind = 'email-bounced'", [], |row| row.get(0))
        .unwrap();
    assert_eq!(kept, "{\"dsid\":\"d2\",\"email\":\"b@example.com\"");

    let second = run(&args);
    assert_eq!(second.status.code(), Some(0), "{}", describe(&args, &second));
    let second_stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        second_stdout.contains("0 stored, 0 quarantined, 0 unknown kind, 3 already present, 0 invalid lines kept"),
        "{second_stdout}"
    );
    assert_eq!(String::from_utf8_lossy(&second.stderr), "", "nothing new to report on a second run");
    assert_eq!(server.count("SELECT count(*) FROM email_bounces"), 2);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE source IS NOT NULL"), 3);
    finish(load);
}

#[test]
fn import_keeps_bodies_serve_received() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    // A click and a phone opt-out that serve received earlier. The file
    // contains the same click twice more (real clicks look alike) and the
    // opt-out again.
    assert_eq!(server.post("/hooks/link-clicked", br#"{"id":"link-7"}"#).status, 200);
    assert_eq!(server.post("/hooks/phone-opt-out", br#"{"dsid":"d1"}"#).status, 200);
    let file = server.dir.path().join("clicks.ndjson");
    std::fs::write(&file, "{\"id\":\"link-7\"}\n{\"id\":\"link-7\"}\n").unwrap();
    let file = file.to_str().unwrap().to_string();
    let array = server.dir.path().join("opt-outs.json");
    std::fs::write(&array, r#"[{"dsid":"d1"}]"#).unwrap();
    let array = array.to_str().unwrap().to_string();

    let first = ok(&["import", "--db", &db, "--kind", "link-clicked", &file]);
    assert!(first.contains("2 stored, 0 quarantined, 0 unknown kind, 0 already present"), "{first}");
    let opt_out = ok(&["import", "--db", &db, "--kind", "phone-opt-out", &array]);
    assert!(opt_out.contains("1 stored"), "{opt_out}");
    assert_eq!(server.count("SELECT count(*) FROM link_clicks"), 3, "every click kept");
    assert_eq!(server.count("SELECT count(*) FROM phone_opt_outs"), 2);
    let sources: Vec<String> = server
        .db()
        .prepare("SELECT source FROM deliveries WHERE source IS NOT NULL ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sources, [format!("import {file}:1"), format!("import {file}:2"), format!("import {array}:#0")]);
    assert_eq!(
        server.count("SELECT count(*) FROM deliveries WHERE source IS NOT NULL AND duplicate_of IS NOT NULL"),
        3,
        "copies of what serve received within the window are marked, as serve marks them"
    );

    let again = ok(&["import", "--db", &db, "--kind", "link-clicked", &file]);
    assert!(again.contains("0 stored, 0 quarantined, 0 unknown kind, 2 already present"), "{again}");
    let again = ok(&["import", "--db", &db, "--kind", "phone-opt-out", &array]);
    assert!(again.contains("0 stored, 0 quarantined, 0 unknown kind, 1 already present"), "{again}");
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 5);
}

#[test]
fn import_reports_unreadable_received_at() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let file = server.dir.path().join("dated.ndjson");
    std::fs::write(
        &file,
        concat!(
            "{\"id\":\"a\",\"at\":\"2025-01-02T03:04:05Z\"}\n",
            "{\"id\":\"b\",\"at\":\"yesterday\"}\n",
            "{\"id\":\"c\"}\n",
            "{\"id\":\"d\",\"at\":\"1753-01-01T00:00:00\"}\n",
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap().to_string();
    let args = ["import", "--db", &db, "--kind", "link-clicked", "--received-at-field", "at", &file];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&args, &output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("4 stored"), "{stdout}");
    assert!(stdout.contains("3 received at the import time (member at missing or unreadable)"), "{stdout}");
    assert!(
        stderr.contains(&format!("{file}:2: cannot read 'yesterday' in member at as a time; using the import time")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{file}:3: no member at; using the import time")), "{stderr}");
    assert!(stderr.contains(&format!("{file}:4: '1753-01-01T00:00:00' in member at")), "{stderr}");
    assert!(!stderr.contains(&format!("{file}:1:")), "a readable time is not reported: {stderr}");
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE received_at = '2025-01-02T03:04:05.000Z'"), 1);

    let again = run(&args);
    assert_eq!(String::from_utf8_lossy(&again.stderr), "", "{}", describe(&args, &again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 received at the import time"), "{}", describe(&args, &again));
}

#[test]
fn import_quarantines_body_without_kind_member() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let file = server.dir.path().join("mixed.json");
    std::fs::write(&file, r#"[{"event":"link-clicked","id":"x"},{"id":"y"},{"event":null,"id":"z"}]"#).unwrap();
    let file = file.to_str().unwrap().to_string();
    let args = ["import", "--db", &db, "--kind-field", "event", &file];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&args, &output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("1 stored, 2 quarantined"), "{stdout}");
    assert!(stdout.contains("2 without a kind in member event"), "{stdout}");
    assert!(stderr.contains(&format!("{file}:#1: no member event")), "{stderr}");
    assert!(stderr.contains(&format!("{file}:#2: member event is null, not a kind slug")), "{stderr}");
    let (kind, outcome, error): (String, String, String) = server
        .db()
        .query_row("SELECT kind, outcome, error FROM deliveries WHERE source = ?1", [format!("import {file}:#1")], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .unwrap();
    assert_eq!((kind.as_str(), outcome.as_str()), ("unknown", "quarantined"));
    assert!(error.contains("no member event"), "{error}");

    // Replay cannot find the kind either, so it keeps import's reason.
    let replay = ok(&["replay", "--db", &db]);
    assert!(replay.contains("0 changed"), "{replay}");
    let after_replay: (String, String) = server
        .db()
        .query_row("SELECT outcome, error FROM deliveries WHERE source = ?1", [format!("import {file}:#1")], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!(after_replay.0, "quarantined");
    assert!(after_replay.1.contains("no member event"), "{}", after_replay.1);
}

#[test]
fn import_directory_is_named() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let dir = server.dir.path().to_str().unwrap().to_string();
    let args = ["import", "--db", &db, "--kind", "link-clicked", &dir];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&args, &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{dir}: it is a directory")), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");
}

#[test]
fn import_json_array_with_kind_field() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let file = server.dir.path().join("events.json");
    std::fs::write(
        &file,
        r#"[{"event":"email-opt-out","dsid":"d1","email":"a@example.com"},
            {"event":"sms-opt-out","dsid":"d1","mobile":"+1-555-0100"},
            {"event":"email-opt-out","dsid":"d1","email":"a@example.com"}]"#,
    )
    .unwrap();
    let stdout = ok(&["import", "--db", &db, "--kind-field", "event", file.to_str().unwrap()]);
    assert!(stdout.contains("3 stored"), "{stdout}");
    assert_eq!(server.count("SELECT count(*) FROM sms_opt_outs WHERE mobile = '+1-555-0100'"), 1);
    // The copy inside the file is kept and marked, as serve would.
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE duplicate_of IS NOT NULL"), 1);
    assert_eq!(server.count("SELECT count(*) FROM opt_outs"), 2);
}

#[test]
fn backup_while_serving_and_no_overwrite() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let load = background_load(&server);
    assert!(common::wait_for(std::time::Duration::from_secs(10), || server.count("SELECT count(*) FROM deliveries") >= 20));

    let dest = server.dir.path().join("copy.db");
    let dest_text = dest.to_str().unwrap().to_string();
    let stdout = ok(&["backup", "--db", &db, &dest_text]);
    assert!(stdout.contains("integrity ok"), "{stdout}");
    let copy = rusqlite::Connection::open(&dest).unwrap();
    let check: String = copy.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
    let copied: i64 = copy.query_row("SELECT count(*) FROM deliveries", [], |row| row.get(0)).unwrap();
    let normalized: i64 = copy.query_row("SELECT count(*) FROM link_clicks", [], |row| row.get(0)).unwrap();
    assert!(copied >= 20, "copy holds the deliveries: {copied}");
    assert_eq!(copied, normalized, "a consistent snapshot: every delivery has its row");
    drop(copy);

    let before = std::fs::read(&dest).unwrap();
    let args = ["backup", "--db", &db, &dest_text];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&args, &output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
    assert_eq!(std::fs::read(&dest).unwrap(), before, "DEST untouched without --force");

    ok(&["backup", "--db", &db, "--force", &dest_text]);
    finish(load);
}

#[test]
fn prune_blanks_old_normalized_bodies_only() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    server.post("/hooks/email-opt-out", br#"{"dsid":"d1","email":"a@example.com"}"#);
    server.post("/hooks/lead-created", br#"{"id":"not a number"}"#);
    server.post("/hooks/email-opt-in", br#"{"dsid":"d1","email":"a@example.com"}"#);
    server
        .db()
        .execute_batch("UPDATE deliveries SET received_at = '2020-01-01T00:00:00.000Z' WHERE id IN (1, 2)")
        .unwrap();

    let dry = ok(&["prune", "--db", &db, "--raw-older-than", "90d", "--dry-run"]);
    assert!(dry.contains("would remove 1 raw bodies"), "{dry}");
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE body IS NULL"), 0);

    let load = background_load(&server);
    let pruned = ok(&["prune", "--db", &db, "--raw-older-than", "90d"]);
    assert!(pruned.contains("removed 1 raw bodies"), "{pruned}");
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE id = 1 AND body IS NULL AND body_removed_by = 'prune'"), 1);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE id = 2 AND body IS NOT NULL"), 1, "quarantined kept");
    assert_eq!(server.count("SELECT count(*) FROM email_opt_outs"), 1, "normalized row kept");

    let again = ok(&["prune", "--db", &db, "--raw-older-than", "90d"]);
    assert!(again.contains("removed 0 raw bodies"), "{again}");
    let with_quarantined = ok(&["prune", "--db", &db, "--raw-older-than", "90d", "--include-quarantined"]);
    assert!(with_quarantined.contains("removed 1 raw bodies"), "{with_quarantined}");
    finish(load);

    let args = ["prune", "--db", &db, "--raw-older-than", "ninety days"];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&args, &output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("'ninety days'"));
}

#[test]
fn prune_rejects_negative_duration() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    for value in ["-5d", "0", "0d"] {
        let args = ["prune", "--db", &db, "--raw-older-than", value];
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{}", describe(&args, &output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("--raw-older-than '{value}'")), "{stderr}");
        assert!(stderr.contains("must be positive"), "{stderr}");
    }
}

#[test]
fn backup_names_missing_directory() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let dest = server.dir.path().join("no-such-dir").join("x.db");
    let dest = dest.to_str().unwrap().to_string();
    let args = ["backup", "--db", &db, &dest];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&args, &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-dir does not exist"), "{stderr}");
    assert!(!stderr.contains(".partial"), "the temporary file is an internal detail: {stderr}");
}

#[test]
fn forget_erases_person_everywhere() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let ann = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
    server.post("/hooks/email-opt-out", format!(r#"{{"dsid":"{ann}","email":"Ann@Example.com"}}"#).as_bytes());
    server.post("/hooks/text-reply", format!(r#"{{"dsid":"{ann}","mobile":"+1 555-0100","message":"STOP"}}"#).as_bytes());
    server.post("/hooks/contact-updated", format!(r#"{{"dsId":"{ann}","email":"ann@example.com","firstName":"Ann"}}"#).as_bytes());
    server.post("/hooks/link-clicked", br#"{"id":"ann@example.com-link"}"#);
    server.post("/hooks/email-opt-out", br#"{"dsid":"b0b","email":"bob@example.com"}"#);

    let dry = ok(&["forget", "--db", &db, "--email", "ann@example.com", "--dry-run"]);
    assert!(dry.contains("would erase 1 rows in text_replies"), "found through the contact id: {dry}");
    assert_eq!(server.count("SELECT count(*) FROM text_replies"), 1);

    let load = background_load(&server);
    let erased = ok(&["forget", "--db", &db, "--email", "ann@example.com"]);
    assert!(erased.contains("erased 1 rows in email_opt_outs"), "{erased}");
    assert!(erased.contains("erased 1 rows in contact_updates"), "{erased}");
    assert!(erased.contains("erased 1 rows in text_replies"), "{erased}");
    assert!(erased.contains("erased 4 rows in deliveries"), "the link click body mentions her too: {erased}");

    let db_handle = server.db();
    let mentions: i64 = db_handle
        .query_row(
            "SELECT count(*) FROM deliveries WHERE instr(lower(CAST(body AS TEXT)), 'ann@example.com') > 0 OR dsid = ?1",
            [ann],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(mentions, 0);
    assert_eq!(server.count("SELECT count(*) FROM email_opt_outs WHERE email = 'bob@example.com'"), 1, "others kept");
    let audit: String = db_handle.query_row("SELECT identifier_type || ' ' || erased FROM erasure_requests", [], |row| row.get(0)).unwrap();
    assert!(audit.starts_with("email {"), "{audit}");
    assert!(!audit.to_lowercase().contains("ann"), "no personal data in the audit row: {audit}");

    let again = ok(&["forget", "--db", &db, "--email", "ann@example.com"]);
    assert!(again.contains("nothing found"), "{again}");
    finish(load);
}

#[test]
fn forget_beside_open_reader_keeps_serving() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    server.post("/hooks/email-opt-out", br#"{"dsid":"c0c","email":"cy@example.com"}"#);

    // Another program's read transaction, open longer than the writer's
    // 5 s busy timeout.
    let reader = server.db();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader.query_row("SELECT count(*) FROM deliveries", [], |row| row.get(0)).unwrap();
    let release = thread::spawn(move || {
        thread::sleep(std::time::Duration::from_secs(6));
        reader.execute_batch("COMMIT").unwrap();
    });

    // Deliveries while forget runs: every status and the slowest response.
    let address = server.address;
    let load = thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut statuses = Vec::new();
        let mut slowest = std::time::Duration::ZERO;
        // Bounded in count and time.
        while statuses.len() < 3000 && started.elapsed() < std::time::Duration::from_secs(7) {
            let body = format!(r#"{{"id":"link-{}"}}"#, statuses.len());
            let request = format!(
                "POST /hooks/link-clicked HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let sent_at = std::time::Instant::now();
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send");
            statuses.push(common::read_reply(&mut stream).expect("answer").status);
            slowest = slowest.max(sent_at.elapsed());
        }
        (statuses, slowest)
    });
    thread::sleep(std::time::Duration::from_millis(200));
    let args = ["forget", "--db", &db, "--dsid", "c0c"];
    let output = run(&args);
    release.join().unwrap();
    let (statuses, slowest) = load.join().unwrap();

    assert_eq!(output.status.code(), Some(0), "{}", describe(&args, &output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("erased 1 rows in email_opt_outs"), "{stdout}");
    // The reader ended within forget's 10 s of retries, so the WAL was cleared.
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{}", describe(&args, &output));
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert!(slowest < std::time::Duration::from_secs(2), "a delivery waited {slowest:?} behind forget");
}

#[test]
fn forget_mobile_compares_whole_numbers() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    server.post("/hooks/text-reply", br#"{"dsid":"a1","mobile":"+1 (555) 010-0100","message":"STOP"}"#);
    server.post(
        "/hooks/email-bounced",
        br#"{"dsid":"b2","email":"b@example.com","date":"2026-03-01T14:05:09Z","reason":"x"}"#,
    );
    // Her digits at the end of a longer number (more than a country code
    // longer), and a number one digit apart: neither is her.
    server.post("/hooks/link-clicked", br#"{"id":"order-4477315550100100"}"#);
    server.post("/hooks/sms-opt-out", br#"{"dsid":"c3","mobile":"+1 555-010-0199"}"#);

    let short = ["forget", "--db", &db, "--mobile", "2026", "--dry-run"];
    let output = run(&short);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&short, &output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("fewer than 7 digits"), "{}", describe(&short, &output));

    let dry = ok(&["forget", "--db", &db, "--mobile", "555 010 0100", "--dry-run"]);
    assert!(dry.contains("would erase 1 rows in text_replies"), "{dry}");
    assert!(dry.contains("would erase 1 rows in deliveries"), "{dry}");
    assert!(!dry.contains("sms_opt_outs"), "{dry}");

    ok(&["forget", "--db", &db, "--mobile", "+1 555 010 0100"]);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE body IS NULL"), 1);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE kind = 'text-reply' AND body IS NULL"), 1);
}

#[test]
fn forget_email_skips_longer_addresses() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    server.post("/hooks/email-opt-out", br#"{"dsid":"b1","email":"bob@example.com"}"#);
    server.post("/hooks/email-opt-out", br#"{"dsid":"j2","email":"jimbob@example.com"}"#);
    server.post("/hooks/email-bounced", br#"{"dsid":"j3","email":"bob@example.com.au","reason":"x"}"#);

    let erased = ok(&["forget", "--db", &db, "--email", "bob@example.com"]);
    assert!(erased.contains("erased 1 rows in deliveries"), "{erased}");
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE body IS NOT NULL"), 2, "the others are kept");
    assert_eq!(server.count("SELECT count(*) FROM email_opt_outs WHERE email = 'jimbob@example.com'"), 1);
}

#[test]
fn commands_name_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["replay", "--db", missing],
        vec!["prune", "--db", missing, "--raw-older-than", "90d"],
        vec!["forget", "--db", missing, "--dsid", "x1234"],
        vec!["backup", "--db", missing, "/tmp/never-written.db"],
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&args, &output));
        assert!(String::from_utf8_lossy(&output.stderr).contains(missing), "{}", describe(&args, &output));
    }
    assert!(!std::path::Path::new(missing).exists(), "no empty database created");
}

#[test]
fn export_streams_rows_of_one_kind() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    server.post("/hooks/email-bounced", br#"{"dsid":"d1","email":"a@example.com","is_spam_complaint":"true","reason":"Spam"}"#);
    server.post("/hooks/email-bounced", br#"{"dsid":"d2","email":"b@example.com","date":"2026-03-01T14:05:09"}"#);
    server.post("/hooks/brand-new", br#"{"x":1}"#);
    server
        .db()
        .execute_batch(
            "UPDATE deliveries SET received_at = '2020-01-01T00:00:00.000Z' WHERE id = 1;
             UPDATE email_bounces SET received_at = '2020-01-01T00:00:00.000Z' WHERE delivery_id = 1;",
        )
        .unwrap();
    let load = background_load(&server);

    let ndjson = ok(&["export", "--db", &db, "--kind", "email-bounced", "--format", "ndjson"]);
    let rows: Vec<serde_json::Value> = ndjson.lines().map(|line| serde_json::from_str(line).expect("JSON line")).collect();
    assert_eq!(rows.len(), 2, "{ndjson}");
    assert_eq!(rows[0]["email"], "a@example.com");
    assert_eq!(rows[0]["is_spam_complaint"], 1);
    assert_eq!(rows[1]["bounced_at"], "2026-03-01T14:05:09.000Z");
    assert_eq!(rows[1]["date_text"], "2026-03-01T14:05:09");
    assert_eq!(rows[1]["duplicate_of"], serde_json::Value::Null);

    let recent = ok(&["export", "--db", &db, "--kind", "email-bounced", "--since", "2021-01-01", "--format", "json"]);
    let recent: serde_json::Value = serde_json::from_str(&recent).expect("JSON array");
    assert_eq!(recent.as_array().unwrap().len(), 1);
    assert_eq!(recent[0]["dsid"], "d2");

    let raw = ok(&["export", "--db", &db, "--kind", "brand-new", "--raw"]);
    let mut lines = raw.lines();
    assert!(lines.next().unwrap().starts_with("delivery_id,received_at,kind,outcome"), "{raw}");
    let row = lines.next().expect("one raw row");
    assert!(row.contains("unknown_kind"), "{raw}");
    assert!(row.contains(r#"{""x"":1}"#), "raw body in the row: {raw}");

    assert_eq!(ok(&["export", "--db", &db, "--kind", "email-bounced", "--format", "ndjson"]), ndjson, "a second run gives the same rows");
    finish(load);

    let args = ["export", "--db", &db, "--kind", "brand-new"];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&args, &output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--raw"));
}

/// Runs the binary with its standard output on a pipe whose reader has
/// already quit, as `| head -1` leaves it after one line.
fn run_into_closed_pipe(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    std::process::Command::new(common::BIN)
        .args(args)
        .env_remove("DSEVENTS_TOKEN")
        .env_remove("DSEVENTS_DB")
        .stdout(writer)
        .output()
        .expect("run dsevents")
}

#[test]
fn closed_stdout_ends_commands_quietly() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let mut files = Vec::new();
    for (index, dsid) in ["p1", "p2", "p3"].iter().enumerate() {
        let file = server.dir.path().join(format!("part{index}.ndjson"));
        std::fs::write(&file, format!("{{\"dsid\":\"{dsid}\",\"email\":\"{dsid}@example.com\"}}\n")).unwrap();
        files.push(file.to_str().unwrap().to_string());
    }

    let mut import = vec!["import", "--db", &db, "--kind", "email-bounced"];
    import.extend(files.iter().map(String::as_str));
    let backup = server.dir.path().join("copy.db");
    let backup = backup.to_str().unwrap();
    for args in [
        import,
        vec!["status", "--db", &db],
        vec!["status", "--db", &db, "--format", "json"],
        vec!["backup", "--db", &db, backup],
        vec!["replay", "--db", &db],
        vec!["prune", "--db", &db, "--raw-older-than", "90d"],
        vec!["forget", "--db", &db, "--dsid", "nobody-here"],
    ] {
        let output = run_into_closed_pipe(&args);
        assert_eq!(output.status.code(), Some(0), "{}", describe(&args, &output));
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{}", describe(&args, &output));
    }

    // Every file is imported, not only those before the first lost line.
    assert_eq!(server.count("SELECT count(*) FROM email_bounces WHERE dsid IN ('p1', 'p2', 'p3')"), 3);
    assert!(std::path::Path::new(backup).exists(), "backup written");
}

#[test]
fn full_stdout_named_and_import_finishes() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let mut files = Vec::new();
    for dsid in ["f1", "f2", "f3"] {
        let file = server.dir.path().join(format!("{dsid}.ndjson"));
        std::fs::write(&file, format!("{{\"dsid\":\"{dsid}\",\"email\":\"{dsid}@example.com\"}}\n")).unwrap();
        files.push(file.to_str().unwrap().to_string());
    }
    let mut args = vec!["import", "--db", &db, "--kind", "email-bounced"];
    args.extend(files.iter().map(String::as_str));

    let output = std::process::Command::new(common::BIN)
        .args(&args)
        .env_remove("DSEVENTS_DB")
        .stdout(std::fs::File::create("/dev/full").expect("open /dev/full"))
        .output()
        .expect("run dsevents");

    assert_eq!(output.status.code(), Some(1), "{}", describe(&args, &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("failed to write to standard output"), "{stderr}");
    assert!(stderr.contains("importing the remaining files"), "{stderr}");
    assert_eq!(server.count("SELECT count(*) FROM email_bounces WHERE dsid IN ('f1', 'f2', 'f3')"), 3);
}
