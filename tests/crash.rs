//! Crash test: concurrent clients post deliveries of several kinds while the
//! server is killed with SIGKILL at a random moment, then restarted on the
//! same database file, several times over. Every delivery that got a 2xx
//! response must be in `deliveries` and in its kind's table exactly once,
//! and SQLite's integrity check must pass after every restart.
//!
//! The moments are drawn from a seed printed at the start; set
//! DSEVENTS_CRASH_SEED to that number to repeat a run.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{read_reply, Server};

const CYCLES: u64 = 5;
const CLIENTS: u64 = 4;
/// Bounds on each client's load per cycle. The kill normally ends it first.
const MAX_REQUESTS_PER_CLIENT: u64 = 5_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(3);
/// The kill comes this long after the clients start, drawn uniformly.
const KILL_AFTER_MS: std::ops::Range<u64> = 30..800;

/// SplitMix64: small, seedable, and good enough to pick moments and kinds.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        value ^ (value >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// A kind the clients post, with the column of its table that contains the
/// delivery's unique token.
struct Kind {
    slug: &'static str,
    table: &'static str,
    column: &'static str,
    body: fn(&str) -> String,
}

const KINDS: &[Kind] = &[
    Kind {
        slug: "contact-updated",
        table: "contact_updates",
        column: "dsid",
        body: |token| {
            format!(
                r#"{{"dsId":"{token}","email":"ana@example.com","mobilePhone":"+15550100","firstName":"Ana","lastName":"Silva","status":"Active","optOut":false,"dateContactCreated":"2026-01-05T10:22:31.517","dateLastContacted":"1753-01-01T00:00:00","accountId":1042,"extendedProperties":{{"plan":"pro"}}}}"#
            )
        },
    },
    Kind {
        slug: "email-bounced",
        table: "email_bounces",
        column: "message_id",
        body: |token| {
            format!(
                r#"{{"dsid":"d41d8cd98f00b204e9800998ecf8427e","email":"bob@example.org","date":"2026-03-01T14:05:09.517","messageid":"{token}","is_spam_complaint":"false","reason":"Permanent Delivery Failure - Address not deliverable"}}"#
            )
        },
    },
    Kind {
        slug: "link-clicked",
        table: "link_clicks",
        column: "link_id",
        body: |token| format!(r#"{{"id":"{token}"}}"#),
    },
    Kind {
        slug: "email-opt-out",
        table: "email_opt_outs",
        column: "dsid",
        body: |token| format!(r#"{{"dsid":"{token}","email":"carol@example.net"}}"#),
    },
    Kind {
        slug: "sms-opt-in",
        table: "sms_opt_ins",
        column: "dsid",
        body: |token| format!(r#"{{"dsid":"{token}","mobile":"+15550123"}}"#),
    },
    Kind {
        slug: "lead-status-changed",
        table: "lead_status_changes",
        column: "dsid",
        body: |token| format!(r#"{{"id":"1042","dsid":"{token}","status":"Qualified"}}"#),
    },
    Kind {
        slug: "text-reply",
        table: "text_replies",
        column: "message",
        body: |token| format!(r#"{{"dsid":"0cc175b9c0f1b6a831c399e269772661","mobile":"+15550199","message":"{token}"}}"#),
    },
    Kind {
        slug: "user-created",
        table: "users_created",
        column: "user_uid",
        body: |token| format!(r#"{{"email":"staff@example.com","useruid":"{token}"}}"#),
    },
];

/// Returns the `tok-...` token inside `text`, if any.
fn token_in(text: &str) -> Option<&str> {
    let start = text.find("tok-")?;
    let rest = &text[start..];
    let end = rest[4..].find(|c: char| !(c.is_ascii_digit() || c == '-')).map_or(rest.len(), |end| end + 4);
    Some(&rest[..end])
}

/// A delivery that got a 2xx response.
#[derive(Debug, Clone)]
struct Acknowledged {
    id: i64,
    kind: usize,
}

/// Posts deliveries on one kept-alive connection until the server stops
/// responding or a bound is reached. Returns the acknowledged ones by token.
fn run_client(address: SocketAddr, cycle: u64, client: u64, seed: u64) -> HashMap<String, Acknowledged> {
    let mut random = Random(seed);
    let mut acknowledged = HashMap::new();
    let Ok(mut stream) = TcpStream::connect(address) else {
        return acknowledged;
    };
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set read timeout");
    let started = Instant::now();

    for sequence in 0..MAX_REQUESTS_PER_CLIENT {
        if started.elapsed() > MAX_LOAD_TIME {
            break;
        }
        let kind = random.below(KINDS.len() as u64) as usize;
        let token = format!("tok-{cycle}-{client}-{sequence}");
        let body = (KINDS[kind].body)(&token);
        let request = format!(
            "POST /hooks/{} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            KINDS[kind].slug,
            body.len()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            break;
        }
        let Ok(reply) = read_reply(&mut stream) else {
            break; // killed before it responded, so this one may or may not be stored
        };
        assert!(
            (200..300).contains(&reply.status),
            "{} answered {} before the kill: {}",
            KINDS[kind].slug,
            reply.status,
            reply.body
        );
        let id = reply.json()["id"].as_i64().expect("id in a 2xx answer");
        acknowledged.insert(token, Acknowledged { id, kind });
    }
    acknowledged
}

/// Checks the database file against every acknowledged delivery so far.
fn verify(db: &Path, acknowledged: &HashMap<String, Acknowledged>, context: &str) {
    let connection = rusqlite::Connection::open(db).expect("open database");
    connection.busy_timeout(Duration::from_secs(5)).expect("busy timeout");

    let integrity: String = connection.query_row("PRAGMA integrity_check", [], |row| row.get(0)).expect("integrity check");
    assert_eq!(integrity, "ok", "{context}");
    let foreign_key_errors: i64 = connection
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| row.get(0))
        .expect("foreign key check");
    assert_eq!(foreign_key_errors, 0, "{context}");

    // Every token in deliveries, with the ids of the rows that carry it.
    let mut delivered: HashMap<String, Vec<(i64, String, String)>> = HashMap::new();
    let mut statement = connection.prepare("SELECT id, kind, outcome, CAST(body AS TEXT) FROM deliveries").unwrap();
    let rows = statement
        .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?, row.get::<_, String>(3)?)))
        .unwrap();
    for row in rows {
        let (id, kind, outcome, body) = row.unwrap();
        if let Some(token) = token_in(&body) {
            delivered.entry(token.to_string()).or_default().push((id, kind, outcome));
        }
    }
    for (token, rows) in &delivered {
        assert_eq!(rows.len(), 1, "{context}: token {token} is in deliveries {} times: {rows:?}", rows.len());
    }

    // Every token in the per-kind tables, with its delivery_id.
    let mut normalized: HashMap<String, Vec<(i64, &str)>> = HashMap::new();
    for kind in KINDS {
        // Table and column names are this test's constants.
        let sql = format!("SELECT delivery_id, {} FROM {}", kind.column, kind.table);
        let mut statement = connection.prepare(&sql).unwrap();
        let rows = statement.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Option<String>>(1)?))).unwrap();
        for row in rows {
            let (delivery_id, value) = row.unwrap();
            if let Some(token) = value.as_deref().and_then(token_in) {
                normalized.entry(token.to_string()).or_default().push((delivery_id, kind.table));
            }
        }
    }

    for (token, expected) in acknowledged {
        let kind = &KINDS[expected.kind];
        let rows = delivered.get(token).unwrap_or_else(|| panic!("{context}: acknowledged {token} (id {}) is missing from deliveries", expected.id));
        assert_eq!(rows[0].0, expected.id, "{context}: {token} stored under another id");
        assert_eq!(rows[0].1, kind.slug, "{context}: {token} stored as another kind");
        assert_eq!(rows[0].2, "stored", "{context}: {token} not normalized");

        let rows = normalized
            .get(token)
            .unwrap_or_else(|| panic!("{context}: acknowledged {token} is missing from {}", kind.table));
        assert_eq!(rows, &vec![(expected.id, kind.table)], "{context}: {token} in the per-kind tables");
    }
}

#[test]
fn killed_server_keeps_acknowledged_deliveries() {
    let seed = match std::env::var("DSEVENTS_CRASH_SEED") {
        Ok(text) => text.parse().expect("DSEVENTS_CRASH_SEED must be a whole number"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    println!("crash test seed: {seed} (set DSEVENTS_CRASH_SEED={seed} to repeat)");
    let mut random = Random(seed);

    let dir = tempfile::tempdir().expect("create temp dir");
    let db = dir.path().join("events.db");
    // The database lives in `dir`, which outlives every server; each server
    // gets a directory of its own to keep alive, which stays empty.
    let mut server = Server::start_on(tempfile::tempdir().expect("create temp dir"), db.clone(), &[]);
    let mut acknowledged: HashMap<String, Acknowledged> = HashMap::new();

    for cycle in 0..CYCLES {
        let kill_after = Duration::from_millis(KILL_AFTER_MS.start + random.below(KILL_AFTER_MS.end - KILL_AFTER_MS.start));
        let client_seeds: Vec<u64> = (0..CLIENTS).map(|_| random.next()).collect();
        let address = server.address;

        let answered: Vec<HashMap<String, Acknowledged>> = std::thread::scope(|scope| {
            let clients: Vec<_> = client_seeds
                .iter()
                .enumerate()
                .map(|(client, seed)| scope.spawn(move || run_client(address, cycle, client as u64, *seed)))
                .collect();
            std::thread::sleep(kill_after);
            server.signal("KILL");
            assert!(server.wait_exit(Duration::from_secs(10)).is_some(), "server still running after SIGKILL");
            clients.into_iter().map(|client| client.join().expect("client thread")).collect()
        });
        let count: usize = answered.iter().map(HashMap::len).sum();
        println!("cycle {cycle}: killed after {kill_after:?}, {count} deliveries acknowledged");
        for client in answered {
            acknowledged.extend(client);
        }

        server = Server::start_on(tempfile::tempdir().expect("create temp dir"), db.clone(), &[]);
        verify(&db, &acknowledged, &format!("after the restart of cycle {cycle} (seed {seed})"));
    }

    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(30)).expect("server stops after SIGTERM");
    assert!(status.success(), "server exited with {status} after SIGTERM");
    verify(&db, &acknowledged, &format!("after the final shutdown (seed {seed})"));
    assert!(!acknowledged.is_empty(), "no delivery was acknowledged in {CYCLES} cycles (seed {seed})");
}
