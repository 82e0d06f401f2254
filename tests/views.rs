//! The report views in schema.sql, checked on a few deliveries written the
//! way `serve` writes them, retries included.

use dsevents::store::{self, Delivery};
use rusqlite::types::Value;
use rusqlite::Connection;

/// The duplicate window `serve` uses by default, in milliseconds.
const WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// Writes deliveries given as (kind, body, minute of 2026-03-01 14:mm).
fn database(deliveries: &[(&str, &str, u32)]) -> Connection {
    let mut connection = Connection::open_in_memory().unwrap();
    connection.execute_batch(store::SCHEMA_SQL).unwrap();
    let tx = connection.transaction().unwrap();
    let mut recent = store::RecentBodies::new(WINDOW_MS);
    for (kind, body, minute) in deliveries {
        let received_at = format!("2026-03-01T14:{minute:02}:00.000Z");
        let delivery = Delivery::new(kind, body.as_bytes().to_vec(), None, received_at);
        store::insert_delivery(&tx, &delivery, &mut recent).unwrap();
    }
    tx.commit().unwrap();
    connection
}

/// Runs `sql` and returns every value as text (integers too), NULL as None.
fn rows(connection: &Connection, sql: &str) -> Vec<Vec<Option<String>>> {
    let as_text = |value: Value| match value {
        Value::Null => None,
        Value::Integer(number) => Some(number.to_string()),
        Value::Real(number) => Some(number.to_string()),
        Value::Text(text) => Some(text),
        Value::Blob(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
    };
    let mut statement = connection.prepare(sql).unwrap();
    let width = statement.column_count();
    statement
        .query_map([], |row| (0..width).map(|index| row.get::<_, Value>(index).map(as_text)).collect())
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn text(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|value| value.map(str::to_string)).collect()
}

#[test]
fn lead_history_skips_retries() {
    let connection = database(&[
        ("lead-status-changed", r#"{"id":7,"dsid":"c1","status":"New"}"#, 1),
        ("lead-status-changed", r#"{"id":8,"dsid":"c2","status":"New"}"#, 2),
        ("lead-status-changed", r#"{"id":7,"dsid":"c1","status":"Contacted"}"#, 3),
        // A retry of the previous body: kept, marked, left out of the view.
        ("lead-status-changed", r#"{"id":7,"dsid":"c1","status":"Contacted"}"#, 4),
        ("lead-status-changed", r#"{"id":7,"dsid":"c1","status":"Won"}"#, 5),
    ]);

    let history = rows(
        &connection,
        "SELECT previous_status, status, changed_at FROM lead_status_history WHERE lead_id = 7 ORDER BY changed_at",
    );
    assert_eq!(
        history,
        vec![
            text(&[None, Some("New"), Some("2026-03-01T14:01:00.000Z")]),
            text(&[Some("New"), Some("Contacted"), Some("2026-03-01T14:03:00.000Z")]),
            text(&[Some("Contacted"), Some("Won"), Some("2026-03-01T14:05:00.000Z")]),
        ]
    );
    let by_dsid = rows(&connection, "SELECT lead_id, previous_status, status FROM lead_status_history WHERE dsid = 'c2'");
    assert_eq!(by_dsid, vec![text(&[Some("8"), None, Some("New")])]);
}

#[test]
fn lead_history_orders_same_time_by_id() {
    let connection = database(&[
        ("lead-status-changed", r#"{"id":7,"status":"New"}"#, 1),
        ("lead-status-changed", r#"{"id":7,"status":"Lost"}"#, 1),
    ]);

    let history = rows(&connection, "SELECT previous_status, status FROM lead_status_history ORDER BY delivery_id");
    assert_eq!(history, vec![text(&[None, Some("New")]), text(&[Some("New"), Some("Lost")])]);
}

#[test]
fn current_consent_takes_newest_change() {
    let connection = database(&[
        ("email-opt-out", r#"{"dsid":"c1","email":"a@example.com"}"#, 1),
        ("email-opt-in", r#"{"dsid":"c1","email":"a@example.com"}"#, 2),
        ("sms-opt-out", r#"{"dsid":"c1","mobile":"+15550100"}"#, 3),
        ("email-opt-out", r#"{"dsid":"c2","email":"b@example.com"}"#, 4),
        // Retry: counted once in opt_outs.
        ("email-opt-out", r#"{"dsid":"c2","email":"b@example.com"}"#, 5),
        // No dsid: keyed by the address.
        ("email-opt-out", r#"{"email":"c@example.com"}"#, 6),
        // Same minute as the opt-out above, so the later delivery wins.
        ("email-opt-in", r#"{"email":"c@example.com"}"#, 6),
    ]);

    let consent = rows(
        &connection,
        "SELECT contact, channel, consent, changed_at FROM current_consent ORDER BY contact, channel",
    );
    assert_eq!(
        consent,
        vec![
            text(&[Some("c1"), Some("email"), Some("opted-in"), Some("2026-03-01T14:02:00.000Z")]),
            text(&[Some("c1"), Some("sms"), Some("opted-out"), Some("2026-03-01T14:03:00.000Z")]),
            text(&[Some("c2"), Some("email"), Some("opted-out"), Some("2026-03-01T14:04:00.000Z")]),
            text(&[Some("c@example.com"), Some("email"), Some("opted-in"), Some("2026-03-01T14:06:00.000Z")]),
        ]
    );
    let opt_outs = rows(&connection, "SELECT channel, dsid, address FROM opt_outs ORDER BY delivery_id");
    assert_eq!(
        opt_outs,
        vec![
            text(&[Some("email"), Some("c1"), Some("a@example.com")]),
            text(&[Some("sms"), Some("c1"), Some("+15550100")]),
            text(&[Some("email"), Some("c2"), Some("b@example.com")]),
            text(&[Some("email"), None, Some("c@example.com")]),
        ]
    );
}

/// The reports read indexes, not every row: the plans name the indexes.
#[test]
fn report_views_use_indexes() {
    let connection = database(&[]);
    let plan = |sql: &str| -> String {
        rows(&connection, &format!("EXPLAIN QUERY PLAN {sql}"))
            .into_iter()
            .map(|row| row[3].clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };

    let by_lead = plan("SELECT * FROM lead_status_history WHERE lead_id = 7");
    assert!(by_lead.contains("USING COVERING INDEX lead_status_changes_lead (lead_id=?)"), "{by_lead}");
    let by_dsid = plan("SELECT * FROM lead_status_history WHERE dsid = 'c1'");
    assert!(by_dsid.contains("USING INDEX lead_status_changes_dsid (dsid=?)"), "{by_dsid}");
    let opt_outs = plan("SELECT * FROM opt_outs");
    assert!(opt_outs.contains("deliveries_duplicates"), "{opt_outs}");
    assert!(!opt_outs.contains("SEARCH d "), "{opt_outs}");
}
