//! Runs `dsevents query` against databases written through the same path
//! `serve` uses (`Delivery::new` and `insert_delivery`), and checks the
//! standard output, standard error and exit code a user would read.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dsevents::store::{self, Delivery, Receipt};
use serde_json::{json, Value};
use tempfile::TempDir;

/// Identical bodies of one kind received within this many milliseconds
/// are duplicates (retries).
const DUPLICATE_WINDOW_MS: i64 = 60_000;

const ADA: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
const BOB: &str = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";
const CY: &str = "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c";

/// A temporary directory with a database in it.
struct Fixture {
    dir: TempDir,
    db: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let db = dir.path().join("events.db");
        store::open_or_create(&db).expect("create the database");
        Fixture { dir, db }
    }

    /// Stores one delivery of `kind` received at `received_at`.
    fn deliver(&self, kind: &str, body: &str, received_at: &str) -> Receipt {
        self.deliver_all(&[(kind, body, received_at)]).remove(0)
    }

    /// Stores deliveries in one transaction, as the server's group commit does.
    fn deliver_all(&self, deliveries: &[(&str, &str, &str)]) -> Vec<Receipt> {
        let mut connection = store::open_or_create(&self.db).expect("open the database");
        let tx = connection.transaction().expect("begin a transaction");
        // Read from the database each time, as a restarted server would.
        let mut recent = store::RecentBodies::new(DUPLICATE_WINDOW_MS);
        let mut receipts = Vec::new();
        for (kind, body, received_at) in deliveries {
            let delivery = Delivery::new(
                kind,
                body.as_bytes().to_vec(),
                Some("application/json".into()),
                received_at.to_string(),
            );
            receipts.push(store::insert_delivery(&tx, &delivery, &mut recent).expect("insert a delivery"));
        }
        tx.commit().expect("commit");
        receipts
    }

    /// Runs `dsevents query ARGS --db DB` in the fixture's directory.
    fn query(&self, args: &[&str]) -> Run {
        let mut full_args = vec!["query"];
        full_args.extend_from_slice(args);
        full_args.extend_from_slice(&["--db", self.db.to_str().expect("UTF-8 path")]);
        run(self.dir.path(), &full_args)
    }

    /// Runs a query with `--format json` and returns its rows.
    fn query_json(&self, args: &[&str]) -> Vec<Value> {
        let mut full_args = args.to_vec();
        full_args.extend_from_slice(&["--format", "json"]);
        let output = self.query(&full_args);
        output.assert_success();
        match serde_json::from_str(&output.stdout) {
            Ok(Value::Array(rows)) => rows,
            other => panic!("expected a JSON array, got {other:?}\n{output}"),
        }
    }
}

/// What one run of the binary produced.
struct Run {
    command: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "command: {}\nexit code: {:?}\n--- stdout\n{}--- stderr\n{}---",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    fn assert_success(&self) {
        assert_eq!(self.code, Some(0), "expected success\n{self}");
        assert_eq!(self.stderr, "", "expected no error output\n{self}");
    }
}

fn run(dir: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_dsevents"))
        .args(args)
        .current_dir(dir)
        .env_remove("DSEVENTS_DB")
        .output()
        .expect("run dsevents");
    Run {
        command: format!("dsevents {}", args.join(" ")),
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

fn column<'a>(rows: &'a [Value], name: &str) -> Vec<&'a Value> {
    rows.iter().map(|row| &row[name]).collect()
}

fn bounce(dsid: &str, email: &str, reason: &str, spam: bool) -> String {
    json!({
        "dsid": dsid,
        "email": email,
        "date": "2026-03-01T09:59:58",
        "messageid": format!("msg-{email}"),
        "is_spam_complaint": if spam { "true" } else { "false" },
        "reason": reason,
    })
    .to_string()
}

#[test]
fn opt_outs_list_every_channel_newest_first() {
    let fixture = Fixture::new();
    let email = fixture.deliver("email-opt-out", &json!({"dsid": ADA, "email": "ada@example.com"}).to_string(), "2026-03-01T10:00:00.000Z");
    let sms = fixture.deliver("sms-opt-out", &json!({"dsid": BOB, "mobile": "+15550100"}).to_string(), "2026-03-02T10:00:00.000Z");
    let phone = fixture.deliver("phone-opt-out", &json!({"dsid": CY}).to_string(), "2026-03-03T10:00:00.000Z");

    let rows = fixture.query_json(&["opt-outs"]);

    assert_eq!(
        rows,
        vec![
            json!({"channel": "phone", "dsid": CY, "address": null, "received_at": "2026-03-03T10:00:00.000Z", "delivery_id": phone.id}),
            json!({"channel": "sms", "dsid": BOB, "address": "+15550100", "received_at": "2026-03-02T10:00:00.000Z", "delivery_id": sms.id}),
            json!({"channel": "email", "dsid": ADA, "address": "ada@example.com", "received_at": "2026-03-01T10:00:00.000Z", "delivery_id": email.id}),
        ]
    );
}

#[test]
fn opt_outs_filter_by_channel_and_dsid() {
    let fixture = Fixture::new();
    fixture.deliver("email-opt-out", &json!({"dsid": ADA, "email": "ada@example.com"}).to_string(), "2026-03-01T10:00:00.000Z");
    fixture.deliver("sms-opt-out", &json!({"dsid": ADA, "mobile": "+15550100"}).to_string(), "2026-03-01T11:00:00.000Z");
    fixture.deliver("email-opt-out", &json!({"dsid": BOB, "email": "bob@example.com"}).to_string(), "2026-03-01T12:00:00.000Z");

    let email_rows = fixture.query_json(&["opt-outs", "--channel", "email"]);
    assert_eq!(column(&email_rows, "address"), [&json!("bob@example.com"), &json!("ada@example.com")]);

    let ada_rows = fixture.query_json(&["opt-outs", "--dsid", ADA]);
    assert_eq!(column(&ada_rows, "channel"), [&json!("sms"), &json!("email")]);

    let ada_email_rows = fixture.query_json(&["opt-outs", "--dsid", ADA, "--channel", "email"]);
    assert_eq!(column(&ada_email_rows, "address"), [&json!("ada@example.com")]);
}

#[test]
fn current_opt_outs_skip_opted_in() {
    let fixture = Fixture::new();
    fixture.deliver("email-opt-out", &json!({"dsid": ADA, "email": "ada@example.com"}).to_string(), "2026-03-01T10:00:00.000Z");
    fixture.deliver("email-opt-in", &json!({"dsid": ADA, "email": "ada@example.com"}).to_string(), "2026-03-02T10:00:00.000Z");
    let bob = fixture.deliver("email-opt-out", &json!({"dsid": BOB, "email": "bob@example.com"}).to_string(), "2026-03-01T12:00:00.000Z");
    // An opt-in on another channel does not cancel an email opt-out.
    fixture.deliver("sms-opt-in", &json!({"dsid": BOB, "mobile": "+15550100"}).to_string(), "2026-03-03T10:00:00.000Z");

    let every_opt_out = fixture.query_json(&["opt-outs"]);
    assert_eq!(column(&every_opt_out, "dsid"), [&json!(BOB), &json!(ADA)]);

    let current = fixture.query_json(&["opt-outs", "--current"]);
    assert_eq!(
        current,
        vec![json!({
            "channel": "email",
            "dsid": BOB,
            "address": "bob@example.com",
            "changed_at": "2026-03-01T12:00:00.000Z",
            "delivery_id": bob.id,
        })]
    );

    // Ada's opt-out is inside the window but her later opt-in still counts.
    let current_in_window = fixture.query_json(&["opt-outs", "--current", "--until", "2026-03-01T23:00:00Z"]);
    assert_eq!(column(&current_in_window, "dsid"), [&json!(BOB)]);
}

/// `opt-outs --current` finds each contact's newest change in Rust rather
/// than through the current_consent view. Both must give the same rows,
/// also for retries, changes in the same millisecond and contacts known
/// only by address.
#[test]
fn current_opt_outs_match_the_view() {
    let fixture = Fixture::new();
    let opt = |dsid: Option<&str>, email: Option<&str>| {
        let mut body = serde_json::Map::new();
        if let Some(dsid) = dsid {
            body.insert("dsid".into(), json!(dsid));
        }
        if let Some(email) = email {
            body.insert("email".into(), json!(email));
        }
        Value::Object(body).to_string()
    };
    let ada = opt(Some(ADA), Some("ada@example.com"));
    let bob = opt(Some(BOB), Some("bob@example.com"));
    let carol = opt(None, Some("carol@example.com"));
    let sms = |dsid: &str| json!({"dsid": dsid, "mobile": "+15550100"}).to_string();
    fixture.deliver_all(&[
        // Ada opts out, in again, then out: out. The retry of the opt-in
        // comes after her second opt-out and must not count.
        ("email-opt-out", &ada, "2026-03-01T10:00:00.000Z"),
        ("email-opt-in", &ada, "2026-03-01T11:00:00.000Z"),
        ("email-opt-out", &ada, "2026-03-01T12:00:00.000Z"),
        ("email-opt-in", &ada, "2026-03-01T11:00:30.000Z"),
        // Bob's opt-out and opt-in arrive in the same millisecond: the
        // later delivery id wins, so he is opted in.
        ("email-opt-out", &bob, "2026-03-01T13:00:00.000Z"),
        ("email-opt-in", &bob, "2026-03-01T13:00:00.000Z"),
        // Carol has no dsid and is known by address. DailyStory retries her
        // opt-out; the retry is not a change of its own.
        ("email-opt-out", &carol, "2026-03-01T14:00:00.000Z"),
        ("email-opt-out", &carol, "2026-03-01T14:00:30.000Z"),
        ("phone-opt-out", &json!({"dsid": BOB}).to_string(), "2026-03-01T15:00:00.000Z"),
        ("phone-opt-in", &json!({"dsid": BOB}).to_string(), "2026-03-01T15:30:00.000Z"),
        ("sms-opt-out", &sms(BOB), "2026-03-02T09:00:00.000Z"),
        ("sms-opt-in", &sms(ADA), "2026-03-02T09:00:00.000Z"),
    ]);

    let view_rows = |condition: &str| -> Vec<Value> {
        let connection = rusqlite::Connection::open(&fixture.db).expect("open the database");
        let sql = format!(
            "SELECT channel, dsid, address, changed_at, delivery_id FROM current_consent
              WHERE consent = 'opted-out' {condition} ORDER BY changed_at DESC, delivery_id DESC"
        );
        let mut statement = connection.prepare(&sql).expect("prepare");
        let rows = statement
            .query_map([], |row| {
                Ok(json!({
                    "channel": row.get::<_, String>(0)?,
                    "dsid": row.get::<_, Option<String>>(1)?,
                    "address": row.get::<_, Option<String>>(2)?,
                    "changed_at": row.get::<_, String>(3)?,
                    "delivery_id": row.get::<_, i64>(4)?,
                }))
            })
            .expect("query the view");
        rows.collect::<rusqlite::Result<_>>().expect("read the view")
    };

    let all = fixture.query_json(&["opt-outs", "--current"]);
    assert_eq!(all, view_rows(""));
    assert_eq!(column(&all, "dsid"), [&json!(BOB), &Value::Null, &json!(ADA)]);
    assert_eq!(column(&all, "channel"), [&json!("sms"), &json!("email"), &json!("email")]);
    assert_eq!(all[1]["changed_at"], json!("2026-03-01T14:00:00.000Z"));
    assert_eq!(fixture.query_json(&["opt-outs", "--current", "--channel", "email"]), view_rows("AND channel = 'email'"));
    assert_eq!(fixture.query_json(&["opt-outs", "--current", "--dsid", ADA]), view_rows(&format!("AND dsid = '{ADA}'")));
    assert_eq!(
        fixture.query_json(&["opt-outs", "--current", "--since", "2026-03-01T13:30:00Z"]),
        view_rows("AND changed_at >= '2026-03-01T13:30:00.000Z'")
    );
}

#[test]
fn bounces_count_a_retried_delivery_once() {
    let fixture = Fixture::new();
    let body = bounce(ADA, "ada@example.com", "Mailbox full", false);
    let first = fixture.deliver("email-bounced", &body, "2026-03-01T10:00:00.000Z");
    let retry = fixture.deliver("email-bounced", &body, "2026-03-01T10:00:05.000Z");
    assert_eq!(retry.duplicate_of, Some(first.id), "the second copy is a duplicate");

    let rows = fixture.query_json(&["bounces"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["delivery_id"], json!(first.id));

    // The raw deliveries still show both copies.
    let events = fixture.query_json(&["events"]);
    assert_eq!(column(&events, "id"), [&json!(retry.id), &json!(first.id)]);
    assert_eq!(column(&events, "duplicate_of"), [&json!(first.id), &Value::Null]);
}

#[test]
fn bounces_json_uses_json_types() {
    let fixture = Fixture::new();
    let receipt = fixture.deliver(
        "email-bounced",
        &bounce(ADA, "ada@example.com", "Permanent Delivery Failure - Address not deliverable", true),
        "2026-03-01T10:00:00.000Z",
    );
    let without_message_id = json!({"dsid": BOB, "email": "bob@example.com", "reason": "Blocked"}).to_string();
    let second = fixture.deliver("email-bounced", &without_message_id, "2026-03-01T11:00:00.000Z");

    let rows = fixture.query_json(&["bounces"]);

    assert_eq!(
        rows,
        vec![
            json!({
                "bounced_at": null,
                "email": "bob@example.com",
                "reason": "Blocked",
                "is_spam_complaint": null,
                "dsid": BOB,
                "message_id": null,
                "received_at": "2026-03-01T11:00:00.000Z",
                "delivery_id": second.id,
            }),
            json!({
                "bounced_at": "2026-03-01T09:59:58.000Z",
                "email": "ada@example.com",
                "reason": "Permanent Delivery Failure - Address not deliverable",
                "is_spam_complaint": 1,
                "dsid": ADA,
                "message_id": "msg-ada@example.com",
                "received_at": "2026-03-01T10:00:00.000Z",
                "delivery_id": receipt.id,
            }),
        ]
    );
}

#[test]
fn bounces_domain_matches_case_insensitively() {
    let fixture = Fixture::new();
    fixture.deliver("email-bounced", &bounce(ADA, "Ada@Example.COM", "Mailbox full", false), "2026-03-01T10:00:00.000Z");
    fixture.deliver("email-bounced", &bounce(BOB, "bob@other.org", "Mailbox full", false), "2026-03-01T11:00:00.000Z");
    fixture.deliver("email-bounced", &bounce(CY, "cy@mail.example.com", "Mailbox full", false), "2026-03-01T12:00:00.000Z");

    for domain in ["example.com", "@EXAMPLE.com", "Example.Com"] {
        let rows = fixture.query_json(&["bounces", "--domain", domain]);
        assert_eq!(column(&rows, "email"), [&json!("Ada@Example.COM")], "--domain {domain}");
    }

    let none = fixture.query_json(&["bounces", "--domain", "nowhere.test"]);
    assert_eq!(none, Vec::<Value>::new());
}

#[test]
fn bounces_domain_without_name_is_usage_error() {
    let fixture = Fixture::new();
    let output = fixture.query(&["bounces", "--domain", "@"]);
    assert_eq!(output.code, Some(2), "{output}");
    assert!(output.stderr.contains("--domain '@'"), "{output}");
    assert_eq!(output.stdout, "", "{output}");
}

#[test]
fn bounces_spam_only_and_dsid() {
    let fixture = Fixture::new();
    fixture.deliver("email-bounced", &bounce(ADA, "ada@example.com", "Mailbox full", false), "2026-03-01T10:00:00.000Z");
    fixture.deliver("email-bounced", &bounce(BOB, "bob@example.com", "Complaint", true), "2026-03-01T11:00:00.000Z");
    fixture.deliver("email-bounced", &bounce(ADA, "ada@example.com", "Complaint", true), "2026-03-01T12:00:00.000Z");

    let spam = fixture.query_json(&["bounces", "--spam-only"]);
    assert_eq!(column(&spam, "dsid"), [&json!(ADA), &json!(BOB)]);
    assert_eq!(column(&spam, "is_spam_complaint"), [&json!(1), &json!(1)]);

    let ada_spam = fixture.query_json(&["bounces", "--spam-only", "--dsid", ADA]);
    assert_eq!(column(&ada_spam, "received_at"), [&json!("2026-03-01T12:00:00.000Z")]);

    let ada = fixture.query_json(&["bounces", "--dsid", ADA]);
    assert_eq!(column(&ada, "reason"), [&json!("Complaint"), &json!("Mailbox full")]);
}

/// Stores Ada's lead 1 (New, then Qualified, then Won) and lead 3 (New),
/// and Bob's lead 2 (New), interleaved in time.
fn lead_fixture() -> Fixture {
    let fixture = Fixture::new();
    let change = |lead: i64, dsid: &str, status: &str| json!({"id": lead, "dsid": dsid, "status": status}).to_string();
    fixture.deliver_all(&[
        ("lead-status-changed", &change(1, ADA, "New"), "2026-03-01T10:00:00.000Z"),
        ("lead-status-changed", &change(2, BOB, "New"), "2026-03-01T11:00:00.000Z"),
        ("lead-status-changed", &change(1, ADA, "Qualified"), "2026-03-02T10:00:00.000Z"),
        ("lead-status-changed", &change(3, ADA, "New"), "2026-03-02T12:00:00.000Z"),
        ("lead-status-changed", &change(1, ADA, "Won"), "2026-03-03T10:00:00.000Z"),
    ]);
    fixture
}

#[test]
fn lead_status_shows_previous_status() {
    let fixture = lead_fixture();

    let rows = fixture.query_json(&["lead-status"]);

    assert_eq!(column(&rows, "lead_id"), [&json!(1), &json!(1), &json!(1), &json!(2), &json!(3)]);
    assert_eq!(
        column(&rows, "previous_status"),
        [&Value::Null, &json!("New"), &json!("Qualified"), &Value::Null, &Value::Null]
    );
    assert_eq!(
        column(&rows, "status"),
        [&json!("New"), &json!("Qualified"), &json!("Won"), &json!("New"), &json!("New")]
    );
    assert_eq!(rows[2]["changed_at"], json!("2026-03-03T10:00:00.000Z"));
    assert_eq!(rows[2]["dsid"], json!(ADA));
}

#[test]
fn lead_status_filters_by_lead_and_dsid() {
    let fixture = lead_fixture();

    let lead_one = fixture.query_json(&["lead-status", "--lead", "1"]);
    assert_eq!(column(&lead_one, "status"), [&json!("New"), &json!("Qualified"), &json!("Won")]);

    let ada = fixture.query_json(&["lead-status", "--dsid", ADA]);
    assert_eq!(column(&ada, "lead_id"), [&json!(1), &json!(1), &json!(1), &json!(3)]);

    let ada_limited = fixture.query_json(&["lead-status", "--dsid", ADA, "--limit", "2"]);
    assert_eq!(column(&ada_limited, "status"), [&json!("New"), &json!("Qualified")]);

    let bob_lead_one = fixture.query_json(&["lead-status", "--dsid", BOB, "--lead", "1"]);
    assert_eq!(bob_lead_one, Vec::<Value>::new());
}

#[test]
fn lead_status_since_keeps_previous_status() {
    let fixture = lead_fixture();

    let rows = fixture.query_json(&["lead-status", "--lead", "1", "--since", "2026-03-03"]);

    assert_eq!(column(&rows, "status"), [&json!("Won")]);
    assert_eq!(column(&rows, "previous_status"), [&json!("Qualified")]);
}

/// Without --lead or --dsid, `lead-status` carries each previous status
/// from row to row instead of querying lead_status_history. Both must give
/// the same rows, also for retries, changes in the same millisecond,
/// changes without a lead id and a time window.
#[test]
fn lead_status_listing_matches_the_view() {
    let fixture = Fixture::new();
    let change = |lead: Option<i64>, status: Option<&str>| {
        let mut body = json!({"dsid": ADA});
        if let Some(lead) = lead {
            body["id"] = json!(lead);
        }
        if let Some(status) = status {
            body["status"] = json!(status);
        }
        body.to_string()
    };
    fixture.deliver_all(&[
        ("lead-status-changed", &change(Some(7), Some("New")), "2026-03-01T10:00:00.000Z"),
        // A retry of the first change: left out, and not anyone's previous
        // status.
        ("lead-status-changed", &change(Some(7), Some("New")), "2026-03-01T10:00:20.000Z"),
        ("lead-status-changed", &change(Some(7), Some("Qualified")), "2026-03-01T10:00:30.000Z"),
        // Two changes of lead 7 in the same millisecond: the later delivery
        // id comes second.
        ("lead-status-changed", &change(Some(7), Some("Won")), "2026-03-02T09:00:00.000Z"),
        ("lead-status-changed", &change(Some(7), Some("Lost")), "2026-03-02T09:00:00.000Z"),
        ("lead-status-changed", &change(Some(7), None), "2026-03-03T09:00:00.000Z"),
        ("lead-status-changed", &change(Some(7), Some("New")), "2026-03-04T09:00:00.000Z"),
        // Changes without a lead id form one history, as `IS` compares them.
        ("lead-status-changed", &change(None, Some("New")), "2026-03-01T12:00:00.000Z"),
        ("lead-status-changed", &change(None, Some("Contacted")), "2026-03-02T12:00:00.000Z"),
        ("lead-status-changed", &change(Some(3), Some("New")), "2026-03-02T13:00:00.000Z"),
    ]);

    let view_rows = |condition: &str| -> Vec<Value> {
        let connection = rusqlite::Connection::open(&fixture.db).expect("open the database");
        let sql = format!(
            "SELECT lead_id, dsid, previous_status, status, changed_at, delivery_id FROM lead_status_history
              {condition} ORDER BY lead_id, changed_at, delivery_id"
        );
        let mut statement = connection.prepare(&sql).expect("prepare");
        let rows = statement
            .query_map([], |row| {
                Ok(json!({
                    "lead_id": row.get::<_, Option<i64>>(0)?,
                    "dsid": row.get::<_, Option<String>>(1)?,
                    "previous_status": row.get::<_, Option<String>>(2)?,
                    "status": row.get::<_, Option<String>>(3)?,
                    "changed_at": row.get::<_, String>(4)?,
                    "delivery_id": row.get::<_, i64>(5)?,
                }))
            })
            .expect("query the view");
        rows.collect::<rusqlite::Result<_>>().expect("read the view")
    };

    let all = fixture.query_json(&["lead-status"]);
    assert_eq!(all, view_rows(""));
    assert_eq!(
        column(&all, "previous_status"),
        [&Value::Null, &json!("New"), &Value::Null, &Value::Null, &json!("New"), &json!("Qualified"), &json!("Won"), &json!("Lost"), &Value::Null]
    );
    assert_eq!(
        fixture.query_json(&["lead-status", "--since", "2026-03-02T09:00:00Z"]),
        view_rows("WHERE changed_at >= '2026-03-02T09:00:00.000Z'")
    );
    assert_eq!(fixture.query_json(&["lead-status", "--limit", "4"]), all[..4]);
}

/// Text that another tool wrote as invalid UTF-8 is shown with U+FFFD,
/// not a crash.
#[test]
fn lead_status_shows_invalid_utf8_replaced() {
    let fixture = lead_fixture();
    rusqlite::Connection::open(&fixture.db)
        .expect("open the database")
        .execute_batch("UPDATE lead_status_changes SET status = CAST(X'4EFF' AS TEXT) WHERE status = 'Won'")
        .expect("write invalid UTF-8");

    let rows = fixture.query_json(&["lead-status"]);

    assert_eq!(column(&rows, "status")[2], &json!("N\u{FFFD}"));
}

#[test]
fn contact_shows_timeline_with_summaries() {
    let fixture = Fixture::new();
    let updated = json!({"dsId": ADA, "email": "ada@example.com", "status": "Active"}).to_string();
    fixture.deliver_all(&[
        ("contact-updated", &updated, "2026-03-01T09:00:00.000Z"),
        ("email-bounced", &bounce(ADA, "ada@example.com", "Mailbox full", true), "2026-03-01T10:00:00.000Z"),
        ("email-bounced", &bounce(ADA, "ada@example.com", "Mailbox full", true), "2026-03-01T10:00:01.000Z"),
        ("lead-status-changed", &json!({"id": 7, "dsid": ADA, "status": "Won"}).to_string(), "2026-03-02T10:00:00.000Z"),
        ("text-reply", &json!({"dsid": ADA, "mobile": "+15550100", "message": "STOP"}).to_string(), "2026-03-03T10:00:00.000Z"),
        ("email-opt-out", &json!({"dsid": ADA, "email": "ada@example.com"}).to_string(), "2026-03-04T10:00:00.000Z"),
        ("email-opt-out", &json!({"dsid": BOB, "email": "bob@example.com"}).to_string(), "2026-03-04T11:00:00.000Z"),
    ]);

    let rows = fixture.query_json(&["contact", ADA]);

    assert_eq!(
        column(&rows, "kind"),
        [
            &json!("contact-updated"),
            &json!("email-bounced"),
            &json!("lead-status-changed"),
            &json!("text-reply"),
            &json!("email-opt-out"),
        ]
    );
    assert_eq!(
        column(&rows, "summary"),
        [
            &json!("email ada@example.com, status Active"),
            &json!("ada@example.com: Mailbox full (spam complaint)"),
            &json!("lead_id 7, status Won"),
            &json!("from +15550100: STOP"),
            &json!("ada@example.com"),
        ]
    );
    assert!(rows.iter().all(|row| row["outcome"] == json!("stored")), "{rows:?}");
    assert_eq!(rows[0]["received_at"], json!("2026-03-01T09:00:00.000Z"));
    assert_eq!(rows[0]["delivery_id"], json!(1));

    let limited = fixture.query_json(&["contact", ADA, "--since", "2026-03-02", "--limit", "2"]);
    assert_eq!(column(&limited, "kind"), [&json!("lead-status-changed"), &json!("text-reply")]);
}

#[test]
fn contact_lists_quarantined_deliveries() {
    let fixture = Fixture::new();
    let unreadable_date = json!({"dsId": ADA, "email": "ada@example.com", "date": "March 1"}).to_string();
    let quarantined = fixture.deliver("email-bounced", &unreadable_date, "2026-03-01T10:00:00.000Z");
    let unknown = fixture.deliver("coffee-ordered", &json!({"dsid": ADA}).to_string(), "2026-03-01T11:00:00.000Z");
    fixture.deliver("email-bounced", &json!({"dsid": BOB, "date": "March 2"}).to_string(), "2026-03-01T12:00:00.000Z");
    fixture.deliver("email-bounced", "{not json", "2026-03-01T13:00:00.000Z");

    let rows = fixture.query_json(&["contact", ADA]);

    assert_eq!(column(&rows, "delivery_id"), [&json!(quarantined.id), &json!(unknown.id)]);
    assert_eq!(column(&rows, "outcome"), [&json!("quarantined"), &json!("unknown_kind")]);
    let summary = rows[0]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("'March 1' is not a date"), "the summary gives the reason: {rows:?}");
}

#[test]
fn events_list_raw_deliveries_newest_first() {
    let fixture = Fixture::new();
    let stored_body = json!({"dsid": ADA, "email": "ada@example.com"}).to_string();
    let stored = fixture.deliver("email-opt-out", &stored_body, "2026-03-01T10:00:00.000Z");
    let quarantined = fixture.deliver("email-opt-out", "{not json", "2026-03-01T11:00:00.000Z");
    let unknown = fixture.deliver("coffee-ordered", "{}", "2026-03-01T12:00:00.000Z");

    let rows = fixture.query_json(&["events"]);

    assert_eq!(column(&rows, "id"), [&json!(unknown.id), &json!(quarantined.id), &json!(stored.id)]);
    assert_eq!(column(&rows, "outcome"), [&json!("unknown_kind"), &json!("quarantined"), &json!("stored")]);
    assert_eq!(column(&rows, "kind"), [&json!("coffee-ordered"), &json!("email-opt-out"), &json!("email-opt-out")]);
    assert_eq!(column(&rows, "body_bytes"), [&json!(2), &json!(9), &json!(stored_body.len())]);
    assert!(rows[1]["error"].as_str().is_some_and(|error| error.starts_with("body is not valid JSON")), "{rows:?}");
    assert_eq!(rows[2]["error"], Value::Null);

    let only_quarantined = fixture.query_json(&["events", "--outcome", "quarantined"]);
    assert_eq!(column(&only_quarantined, "id"), [&json!(quarantined.id)]);

    let only_unknown = fixture.query_json(&["events", "--outcome", "unknown_kind"]);
    assert_eq!(column(&only_unknown, "id"), [&json!(unknown.id)]);

    let only_kind = fixture.query_json(&["events", "--kind", "email-opt-out"]);
    assert_eq!(column(&only_kind, "id"), [&json!(quarantined.id), &json!(stored.id)]);
}

#[test]
fn events_default_to_fifty_rows() {
    let fixture = Fixture::new();
    let times: Vec<String> = (0..55).map(|minute| format!("2026-03-01T10:{minute:02}:00.000Z")).collect();
    let bodies: Vec<String> = (0..55).map(|n| json!({"id": format!("link-{n}")}).to_string()).collect();
    let deliveries: Vec<(&str, &str, &str)> = bodies
        .iter()
        .zip(&times)
        .map(|(body, time)| ("link-clicked", body.as_str(), time.as_str()))
        .collect();
    fixture.deliver_all(&deliveries);

    let output = fixture.query(&["events", "--format", "json"]);
    assert_eq!(output.code, Some(0), "{output}");
    let rows: Vec<Value> = serde_json::from_str(&output.stdout).expect("a JSON array");
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0]["received_at"], json!("2026-03-01T10:54:00.000Z"));
    assert_eq!(rows[49]["received_at"], json!("2026-03-01T10:05:00.000Z"));
    assert!(output.stderr.contains("showed the newest 50 matching deliveries; more match"), "{output}");
    assert!(output.stderr.contains("--limit N"), "{output}");

    // Exactly as many rows as the limit: nothing was left out, so no notice.
    assert_eq!(fixture.query_json(&["events", "--limit", "55"]).len(), 55);
    let more = fixture.query_json(&["events", "--limit", "60"]);
    assert_eq!(more.len(), 55);
}

#[test]
fn limit_caps_rows() {
    let fixture = Fixture::new();
    for (hour, dsid) in [(10, ADA), (11, BOB), (12, CY)] {
        let body = json!({"dsid": dsid, "email": format!("{dsid}@example.com")}).to_string();
        fixture.deliver("email-opt-out", &body, &format!("2026-03-01T{hour}:00:00.000Z"));
    }

    let rows = fixture.query_json(&["opt-outs", "--limit", "2"]);
    assert_eq!(column(&rows, "dsid"), [&json!(CY), &json!(BOB)]);
}

#[test]
fn limit_zero_is_usage_error() {
    let fixture = Fixture::new();
    let output = fixture.query(&["bounces", "--limit", "0"]);
    assert_eq!(output.code, Some(2), "{output}");
    assert!(output.stderr.contains("'0'"), "{output}");
    assert!(output.stderr.contains("--limit"), "{output}");
    assert_eq!(output.stdout, "", "{output}");
}

#[test]
fn since_and_until_filter_received_at() {
    let fixture = Fixture::new();
    for day in 1..=4 {
        let body = bounce(ADA, &format!("day{day}@example.com"), "Mailbox full", false);
        fixture.deliver("email-bounced", &body, &format!("2026-03-0{day}T10:00:00.000Z"));
    }

    let rows = fixture.query_json(&["bounces", "--since", "2026-03-02", "--until", "2026-03-04T10:00:00Z"]);
    assert_eq!(column(&rows, "email"), [&json!("day3@example.com"), &json!("day2@example.com")]);

    let offset = fixture.query_json(&["bounces", "--since", "2026-03-04T11:00:00+01:00"]);
    assert_eq!(column(&offset, "email"), [&json!("day4@example.com")]);

    // Durations count back from now: 36500d is about a century ago.
    let since_century = fixture.query_json(&["bounces", "--since", "36500d"]);
    assert_eq!(since_century.len(), 4);
    let until_century = fixture.query_json(&["bounces", "--until", "36500d"]);
    assert_eq!(until_century, Vec::<Value>::new());
}

#[test]
fn bad_since_exits_2_naming_value() {
    let fixture = Fixture::new();
    let output = fixture.query(&["bounces", "--since", "last tuesday"]);
    assert_eq!(output.code, Some(2), "{output}");
    assert!(output.stderr.starts_with("dsevents: --since"), "{output}");
    assert!(output.stderr.contains("'last tuesday'"), "{output}");
    assert!(output.stderr.contains("7d"), "names an example that works\n{output}");
    assert_eq!(output.stdout, "", "{output}");
}

#[test]
fn since_after_until_exits_2() {
    let fixture = Fixture::new();
    let output = fixture.query(&["events", "--since", "2026-03-02", "--until", "2026-03-01"]);
    assert_eq!(output.code, Some(2), "{output}");
    assert!(output.stderr.contains("2026-03-02T00:00:00.000Z"), "{output}");
}

#[test]
fn missing_database_exits_1_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let missing = dir.path().join("missing.db");

    let output = run(dir.path(), &["query", "bounces", "--db", missing.to_str().expect("UTF-8 path")]);

    assert_eq!(output.code, Some(1), "{output}");
    assert!(output.stderr.contains(&missing.display().to_string()), "{output}");
    assert_eq!(output.stdout, "", "{output}");
    assert!(!missing.exists(), "no database file was created");
    let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("list the directory").collect();
    assert!(entries.is_empty(), "the directory stays empty: {entries:?}");
}

#[test]
fn database_path_from_environment() {
    let fixture = Fixture::new();
    fixture.deliver("phone-opt-out", &json!({"dsid": ADA}).to_string(), "2026-03-01T10:00:00.000Z");

    let output = Command::new(env!("CARGO_BIN_EXE_dsevents"))
        .args(["query", "opt-outs", "--format", "csv"])
        .current_dir(fixture.dir.path())
        .env("DSEVENTS_DB", &fixture.db)
        .output()
        .expect("run dsevents");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, format!("channel,dsid,address,received_at,delivery_id\nphone,{ADA},,2026-03-01T10:00:00.000Z,1\n"));
}

#[test]
fn csv_is_default_when_output_is_not_terminal() {
    let fixture = Fixture::new();
    let reply = json!({"dsid": ADA, "mobile": "+15550100", "message": "Yes, \"please\"\ncall me"}).to_string();
    fixture.deliver("text-reply", &reply, "2026-03-01T10:00:00.000Z");

    let output = fixture.query(&["contact", ADA]);

    output.assert_success();
    assert_eq!(
        output.stdout,
        "received_at,kind,outcome,summary,delivery_id\n\
         2026-03-01T10:00:00.000Z,text-reply,stored,\"from +15550100: Yes, \"\"please\"\"\ncall me\",1\n"
    );
}

#[test]
fn table_format_aligns_columns() {
    let fixture = lead_fixture();

    let output = fixture.query(&["lead-status", "--lead", "1", "--format", "table"]);

    output.assert_success();
    let expected = format!(
        "\
lead_id  dsid                              previous_status  status     changed_at                delivery_id
-------  --------------------------------  ---------------  ---------  ------------------------  -----------
      1  {ADA}                   New        2026-03-01T10:00:00.000Z            1
      1  {ADA}  New              Qualified  2026-03-02T10:00:00.000Z            3
      1  {ADA}  Qualified        Won        2026-03-03T10:00:00.000Z            5
"
    );
    assert_eq!(output.stdout, expected, "{output}");
}

#[test]
fn ndjson_writes_one_object_per_line() {
    let fixture = lead_fixture();

    let output = fixture.query(&["lead-status", "--dsid", BOB, "--format", "ndjson"]);

    output.assert_success();
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{output}");
    let row: Value = serde_json::from_str(lines[0]).expect("a JSON object per line");
    assert_eq!(
        row,
        json!({"lead_id": 2, "dsid": BOB, "previous_status": null, "status": "New", "changed_at": "2026-03-01T11:00:00.000Z", "delivery_id": 2})
    );
}

#[test]
fn empty_result_in_every_format() {
    let fixture = Fixture::new();
    let cases = [
        ("csv", "bounced_at,email,reason,is_spam_complaint,dsid,message_id,received_at,delivery_id\n"),
        ("json", "[]\n"),
        ("ndjson", ""),
    ];
    for (format, expected) in cases {
        let output = fixture.query(&["bounces", "--format", format]);
        output.assert_success();
        assert_eq!(output.stdout, expected, "--format {format}\n{output}");
    }
    let table = fixture.query(&["bounces", "--format", "table"]);
    table.assert_success();
    assert_eq!(table.stdout.lines().count(), 2, "header and dashes only\n{table}");
}

#[test]
fn closed_pipe_ends_quietly() {
    let fixture = Fixture::new();
    let bodies: Vec<String> = (0..2000)
        .map(|n| bounce(ADA, &format!("user{n}@example.com"), "Permanent Delivery Failure - Address not deliverable", false))
        .collect();
    let deliveries: Vec<(&str, &str, &str)> =
        bodies.iter().map(|body| ("email-bounced", body.as_str(), "2026-03-01T10:00:00.000Z")).collect();
    fixture.deliver_all(&deliveries);

    for format in ["csv", "json", "ndjson", "table"] {
        // The output (over 200 KB) exceeds a pipe's buffer, so the command
        // writes after the reading end is closed.
        let mut child = Command::new(env!("CARGO_BIN_EXE_dsevents"))
            .args(["query", "bounces", "--format", format, "--db"])
            .arg(&fixture.db)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dsevents");
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait for dsevents");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "--format {format}: stderr {stderr}");
        assert_eq!(stderr, "", "--format {format}");
    }
}

#[test]
fn missing_database_is_not_created_by_any_query() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    for command in [&["opt-outs"][..], &["lead-status"], &["contact", ADA], &["events"]] {
        let mut args = vec!["query"];
        args.extend_from_slice(command);
        let output = run(dir.path(), &args);
        assert_eq!(output.code, Some(1), "{output}");
        assert!(output.stderr.contains("dsevents.db"), "names the default path\n{output}");
    }
    assert!(!dir.path().join("dsevents.db").exists(), "no database file was created");
}
