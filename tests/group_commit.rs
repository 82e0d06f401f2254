//! The group-commit contract seen from outside. A delivery gets a 2xx
//! response only once committed, a store failure gets 503 with its reason,
//! and a lone delivery on an idle server is not held back.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{read_reply, Server};

/// Store failures reach the sender as 503 with the reason, and only the
/// deliveries that got 200 are in the database.
#[test]
fn store_failure_answers_503() {
    let server = Server::start(&[]);
    // A user's tool adds a trigger while the server runs. The writer's
    // cached statements are prepared again and run it.
    server
        .db()
        .execute_batch(
            "CREATE TRIGGER reject_marked BEFORE INSERT ON deliveries
               WHEN instr(CAST(NEW.body AS TEXT), 'reject-me') > 0
             BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;",
        )
        .expect("create trigger");

    let bodies: Vec<String> = (0..16)
        .map(|n| {
            let marker = if n % 2 == 0 { "keep" } else { "reject-me" };
            format!(r#"{{"dsid":"{marker}-{n}","email":"user{n}@example.com"}}"#)
        })
        .collect();
    let replies: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = bodies
            .iter()
            .map(|body| scope.spawn(|| server.post("/hooks/email-opt-out", body.as_bytes())))
            .collect();
        threads.into_iter().map(|thread| thread.join().expect("client thread")).collect()
    });

    let mut stored = Vec::new();
    for (body, reply) in bodies.iter().zip(&replies) {
        if body.contains("reject-me") {
            assert_eq!(reply.status, 503, "{body}: {}", reply.body);
            let reason = reply.json()["error"].as_str().unwrap_or_default().to_string();
            assert!(reason.starts_with("store unavailable: "), "{reason}");
            assert!(reason.contains("simulated write failure"), "{reason}");
            assert!(reply.header("Retry-After").is_some(), "503 without Retry-After");
        } else {
            assert_eq!(reply.status, 200, "{body}: {}", reply.body);
            stored.push((reply.json()["id"].as_i64().expect("id in answer"), body.clone()));
        }
    }

    let connection = server.db();
    let mut rows: Vec<(i64, String)> = connection
        .prepare("SELECT id, CAST(body AS TEXT) FROM deliveries ORDER BY id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    rows.sort();
    stored.sort();
    assert_eq!(rows, stored);
    let normalized: i64 = server.count("SELECT count(*) FROM email_opt_outs");
    assert_eq!(normalized, 8);
}

/// Sends `count` deliveries one after another on one kept-alive connection
/// and returns the shortest round trip.
fn shortest_round_trip(server: &Server, count: usize) -> Duration {
    let mut stream = server.connect();
    let mut shortest = Duration::MAX;
    for n in 0..count {
        let body = format!(r#"{{"id":"lnk-lone-{n}"}}"#);
        let request = format!(
            "POST /hooks/link-clicked HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            server.address,
            body.len()
        );
        let started = Instant::now();
        stream.write_all(request.as_bytes()).expect("send request");
        let reply = read_reply(&mut stream).expect("read answer");
        shortest = shortest.min(started.elapsed());
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    shortest
}

/// Returns the shortest time to commit one row with the server's settings
/// (WAL, synchronous=FULL) in a database beside the server's.
fn shortest_direct_commit(dir: &std::path::Path, count: usize) -> Duration {
    let connection = rusqlite::Connection::open(dir.join("baseline.db")).expect("open baseline");
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE samples (id INTEGER PRIMARY KEY, body BLOB);",
        )
        .expect("create baseline");
    let mut shortest = Duration::MAX;
    for n in 0..count {
        let started = Instant::now();
        connection.execute_batch("BEGIN IMMEDIATE").expect("begin");
        connection.execute("INSERT INTO samples (body) VALUES (?1)", [format!("lnk-{n}")]).expect("insert");
        connection.execute_batch("COMMIT").expect("commit");
        shortest = shortest.min(started.elapsed());
    }
    shortest
}

/// An idle server commits a lone delivery at once: its shortest round trip
/// stays within a few milliseconds of one bare commit, so no timer waits
/// for company. Shortest times are compared because load on the machine
/// only ever adds to a sample.
#[test]
fn lone_delivery_not_delayed() {
    // Of the margin, HTTP, JSON parsing and the second table's insert in a
    // debug build take well under 1 ms on loopback; a writer that waited
    // 3 ms or more for a batch to fill would exceed it on every sample.
    const MARGIN: Duration = Duration::from_millis(3);
    let server = Server::start(&[]);
    let baseline = shortest_direct_commit(server.dir.path(), 30);
    let lone = shortest_round_trip(&server, 30);
    assert!(
        lone <= baseline + MARGIN,
        "shortest lone delivery took {lone:?}; one bare commit takes {baseline:?}"
    );
}
