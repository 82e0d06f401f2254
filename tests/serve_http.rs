//! `dsevents serve` end to end: real deliveries over HTTP, then the rows
//! read back through SQLite.

mod common;

use common::{fixture, run, describe, Server};
use dsevents::catalog::KINDS;

#[test]
fn every_kind_sample_is_stored() {
    let server = Server::start(&[]);
    for kind in KINDS {
        let body = fixture(&format!("samples/{}.json", kind.slug));
        let reply = server.post(&format!("/hooks/{}", kind.slug), &body);
        assert_eq!(reply.status, 200, "{}: {}", kind.slug, reply.body);
        let answer = reply.json();
        assert_eq!(answer["kind"], kind.slug);
        assert_eq!(answer["outcome"], "stored");
        let id = answer["id"].as_i64().expect("numeric id");

        let db = server.db();
        let (stored_body, outcome): (Vec<u8>, String) = db
            .query_row("SELECT body, outcome FROM deliveries WHERE id = ?1", [id], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("delivery row");
        assert_eq!(stored_body, body, "{}: raw body kept byte for byte", kind.slug);
        assert_eq!(outcome, "stored");
        let rows: i64 = db
            .query_row(&format!("SELECT count(*) FROM {} WHERE delivery_id = ?1", kind.table), [id], |row| row.get(0))
            .expect("count normalized rows");
        assert_eq!(rows, 1, "{}: one normalized row", kind.slug);
    }
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), KINDS.len() as i64);
}

/// Posts `body` to `kind` and returns the new delivery id.
fn deliver(server: &Server, kind: &str, body: &[u8]) -> i64 {
    let reply = server.post(&format!("/hooks/{kind}"), body);
    assert_eq!(reply.status, 200, "{kind}: {}", reply.body);
    reply.json()["id"].as_i64().expect("numeric id")
}

fn text_column(server: &Server, table: &str, column: &str, id: i64) -> Option<String> {
    server
        .db()
        .query_row(&format!("SELECT {column} FROM {table} WHERE delivery_id = ?1"), [id], |row| row.get(0))
        .expect("read column")
}

fn integer_column(server: &Server, table: &str, column: &str, id: i64) -> Option<i64> {
    server
        .db()
        .query_row(&format!("SELECT {column} FROM {table} WHERE delivery_id = ?1"), [id], |row| row.get(0))
        .expect("read column")
}

#[test]
fn sender_variations_are_normalized() {
    let server = Server::start(&[]);

    let id = deliver(&server, "email-opt-out", br#"{"DSID":"0f8e1c2d3b4a59687766554433221100","Email":"ana@example.com"}"#);
    assert_eq!(text_column(&server, "email_opt_outs", "dsid", id).as_deref(), Some("0f8e1c2d3b4a59687766554433221100"));

    let id = deliver(&server, "contact-updated", "\u{FEFF}{\"dsId\":\"c1\",\"firstName\":\"Zoë\",\"optOut\":\"False\",\"gender\":\"2\",\"accountId\":7,\"dateBirth\":null,\"dateContactCreated\":\"1753-01-01T00:00:00\",\"dateLastSeen\":\"/Date(1767225600000)/\",\"extendedProperties\":{\"plan\":\"gold\"},\"undocumented\":[1,2]}".as_bytes());
    assert_eq!(text_column(&server, "contact_updates", "dsid", id).as_deref(), Some("c1"));
    assert_eq!(text_column(&server, "contact_updates", "first_name", id).as_deref(), Some("Zoë"));
    assert_eq!(integer_column(&server, "contact_updates", "opt_out", id), Some(0));
    assert_eq!(integer_column(&server, "contact_updates", "gender", id), Some(2));
    assert_eq!(integer_column(&server, "contact_updates", "account_id", id), Some(7));
    assert_eq!(text_column(&server, "contact_updates", "date_birth", id), None);
    assert_eq!(text_column(&server, "contact_updates", "date_contact_created", id), None);
    assert_eq!(text_column(&server, "contact_updates", "date_contact_created_text", id).as_deref(), Some("1753-01-01T00:00:00"));
    assert_eq!(text_column(&server, "contact_updates", "date_last_seen", id).as_deref(), Some("2026-01-01T00:00:00.000Z"));
    assert_eq!(text_column(&server, "contact_updates", "extended_properties", id).as_deref(), Some(r#"{"plan":"gold"}"#));

    let id = deliver(&server, "email-bounced", br#"{"dsid":"d2","email":"bo@example.com","date":"2026-03-01T14:05:09.517","messageid":"m-1","is_spam_complaint":"true","reason":"Spam complaint"}"#);
    assert_eq!(text_column(&server, "email_bounces", "bounced_at", id).as_deref(), Some("2026-03-01T14:05:09.517Z"));
    assert_eq!(text_column(&server, "email_bounces", "date_text", id).as_deref(), Some("2026-03-01T14:05:09.517"));
    assert_eq!(integer_column(&server, "email_bounces", "is_spam_complaint", id), Some(1));

    let id = deliver(&server, "email-bounced", br#"{"dsid":"d3","email":"x@example.com","date":"2026-03-01T16:05:09+02:00","is_spam_complaint":false}"#);
    assert_eq!(text_column(&server, "email_bounces", "bounced_at", id).as_deref(), Some("2026-03-01T14:05:09.000Z"));
    assert_eq!(integer_column(&server, "email_bounces", "is_spam_complaint", id), Some(0));

    let id = deliver(&server, "lead-created", br#"{"id":9007199254740993,"dsid":"d4"}"#);
    assert_eq!(integer_column(&server, "leads_created", "lead_id", id), Some(9_007_199_254_740_993));
    let id = deliver(&server, "lead-status-changed", br#"{"id":"1042","dsid":"d4","status":"Won"}"#);
    assert_eq!(integer_column(&server, "lead_status_changes", "lead_id", id), Some(1042));

    let id = deliver(&server, "text-reply", "{\"dsid\":\"d5\",\"mobile\":\"+1-555-0100\",\"message\":\"Yes 👍 \\ud83d\"}".as_bytes());
    assert_eq!(text_column(&server, "text_replies", "message", id).as_deref(), Some("Yes 👍 \u{FFFD}"));

    let id = deliver(&server, "segment-updated", br#"{"id":12,"name":"VIP","is_call_list":"1"}"#);
    assert_eq!(text_column(&server, "segments_updated", "segment_id", id).as_deref(), Some("12"));
    assert_eq!(integer_column(&server, "segments_updated", "is_call_list", id), Some(1));
}

#[test]
fn unreadable_bodies_are_kept_and_answered_202() {
    let server = Server::start(&[]);
    let cases: [(&str, &[u8], &str); 4] = [
        ("email-bounced", b"{\"dsid\": \"abc\",", "quarantined"),
        ("lead-created", br#"{"id":"not a number"}"#, "quarantined"),
        ("future-kind", br#"{"anything":1}"#, "unknown_kind"),
        ("email-opt-out", b"\xff\xfe not utf-8", "quarantined"),
    ];
    for (kind, body, outcome) in cases {
        let reply = server.post(&format!("/hooks/{kind}"), body);
        assert_eq!(reply.status, 202, "{kind}: {}", reply.body);
        let answer = reply.json();
        assert_eq!(answer["outcome"], outcome, "{kind}");
        assert!(answer["reason"].as_str().is_some_and(|reason| !reason.is_empty()), "{kind}: reason given");
        let id = answer["id"].as_i64().unwrap();
        let (stored, error): (Vec<u8>, String) = server
            .db()
            .query_row("SELECT body, error FROM deliveries WHERE id = ?1", [id], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap();
        assert_eq!(stored, body, "{kind}: kept byte for byte");
        assert_eq!(Some(error.as_str()), answer["reason"].as_str());
    }
    assert_eq!(server.count("SELECT count(*) FROM email_bounces"), 0);
}

#[test]
fn refused_requests_store_nothing() {
    let server = Server::start(&["--token", "s3cret", "--max-body", "1KiB"]);
    let body = br#"{"dsid":"a","email":"a@example.com"}"#;

    let reply = server.post("/hooks/email-opt-out", body);
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = server.post("/hooks/email-opt-out?token=wrong", body);
    assert_eq!(reply.status, 401);
    let reply = server.request("GET", "/hooks/email-opt-out?token=s3cret", &[], b"");
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("Allow"), Some("POST"));
    let reply = server.post("/webhooks/email-opt-out?token=s3cret", body);
    assert_eq!(reply.status, 404);
    let reply = server.post("/hooks/email-opt-out?token=s3cret", &vec![b' '; 2048]);
    assert_eq!(reply.status, 413);
    for reply in [server.post("/hooks/email-opt-out", body), server.post("/hooks/email-opt-out?token=wrong", body)] {
        assert!(!reply.body.contains("s3cret"), "the token is never echoed");
    }

    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 0);
}

#[test]
fn token_in_query_or_bearer_header() {
    let server = Server::start(&["--token", "a+b/c=d"]);
    let body = br#"{"dsid":"a"}"#;
    let reply = server.post("/hooks/phone-opt-out?token=a%2Bb%2Fc%3Dd", body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = server.request(
        "POST",
        "/hooks/phone-opt-out",
        &[("Authorization", "Bearer a+b/c=d"), ("Content-Type", "application/json")],
        body,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(server.count("SELECT count(*) FROM phone_opt_outs"), 2);
}

#[test]
fn healthz_reports_database() {
    let server = Server::start(&[]);
    let reply = server.request("GET", "/healthz", &[], b"");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "ok");
}

#[test]
fn public_address_without_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let args = ["serve", "--listen", "0.0.0.0:0", "--db", db.to_str().unwrap()];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&args, &output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--allow-unauthenticated"));
}

#[test]
fn delivery_is_committed_before_answer() {
    let server = Server::start(&[]);
    let id = deliver(&server, "user-created", br#"{"email":"new.user@example.com","useruid":"u-1"}"#);
    // A separate connection sees the row as soon as the answer arrives.
    assert_eq!(text_column(&server, "users_created", "user_uid", id).as_deref(), Some("u-1"));
    let mode: String = server.db().query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn port_in_use_creates_no_database() {
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
    let address = occupied.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let args = ["serve", "--listen", &address, "--db", db.to_str().unwrap()];

    let output = run(&args);

    assert_eq!(output.status.code(), Some(1), "{}", describe(&args, &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot listen on {address}")), "{stderr}");
    assert!(!db.exists(), "no database file left behind");
}

#[test]
fn second_serve_on_same_database_fails() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    let args = ["serve", "--listen", "127.0.0.1:0", "--db", &db];

    let output = run(&args);

    assert_eq!(output.status.code(), Some(1), "{}", describe(&args, &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("another dsevents serve is already writing {db}")), "{stderr}");
    let reply = server.post("/hooks/email-opt-out", br#"{"dsid":"d1","email":"a@example.com"}"#);
    assert_eq!(reply.status, 200, "the first serve goes on: {}", reply.body);
}
