//! `serve` under hostile input, slow clients, full disks and shutdowns.
//!
//! Every test runs the real binary on 127.0.0.1 with a temporary database,
//! sends real bytes over real sockets, and ends by checking that the server
//! still stores a real delivery.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{read_reply, wait_for, Reply, Server, BIN};

const TOKEN: &str = "hardening-secret-7f3a9c";

/// Returns a bounce body that its message id makes unique.
fn bounce(message_id: &str) -> String {
    format!(
        r#"{{"dsid":"c0ffee00c0ffee00c0ffee00c0ffee00","email":"pat@example.com","date":"2026-03-01T14:05:09","messageid":"{message_id}","is_spam_complaint":"false","reason":"Permanent Delivery Failure"}}"#
    )
}

/// Returns the bytes of a complete, valid bounce delivery request.
fn delivery_request(path: &str, message_id: &str) -> Vec<u8> {
    let body = bounce(message_id);
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Posts a new bounce and checks that it gets 200 and is stored.
fn assert_stores_delivery(server: &Server, path: &str) {
    let message_id = format!("probe-{}", server.count("SELECT count(*) FROM deliveries") + 1);
    let reply = server.post(path, bounce(&message_id).as_bytes());
    assert_eq!(reply.status, 200, "real delivery after the attack: {}", reply.body);
    let stored: i64 = server
        .db()
        .query_row("SELECT count(*) FROM email_bounces WHERE message_id = ?1", [&message_id], |row| row.get(0))
        .expect("count bounces");
    assert_eq!(stored, 1, "real delivery {message_id} not found in email_bounces");
}

fn hook(kind: &str) -> String {
    format!("/hooks/{kind}?token={TOKEN}")
}

/// Reads what is left on `stream` until the peer closes it. Fails when the
/// peer keeps it open for 5 s.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set timeout");
    let mut rest = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return rest,
            Ok(count) => rest.extend_from_slice(&chunk[..count]),
            // A reset also ends the connection. What matters is that no
            // further response came.
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return rest,
            Err(error) => panic!("connection still open after 5 s ({error}); read so far: {}", String::from_utf8_lossy(&rest)),
        }
    }
}

/// Sends `bytes` on a new connection, reads one response, and checks that
/// the server then closes the connection without a second response.
fn send_expect_close(server: &Server, bytes: &[u8]) -> Reply {
    let mut stream = server.connect();
    stream.write_all(bytes).expect("send request");
    let reply = read_reply(&mut stream).expect("read response");
    let rest = read_until_closed(&mut stream);
    assert!(rest.is_empty(), "bytes after the {} response: {}", reply.status, String::from_utf8_lossy(&rest));
    reply
}

/// Reads as many bytes as `expected` has from `stream` and checks that
/// they are `expected`.
fn read_exact_text(stream: &mut TcpStream, expected: &str) {
    let mut received = vec![0u8; expected.len()];
    stream.read_exact(&mut received).expect("read interim response");
    assert_eq!(String::from_utf8_lossy(&received), expected);
}

/// Sends a request head with `Expect: 100-continue`, waits for the interim
/// response, which proves the server has read the head, and sends the first
/// half of the body. Returns the stream and the rest of the body.
fn start_upload(server: &Server, body: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut stream = server.connect();
    let head = format!(
        "POST /hooks/email-bounced HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send head");
    read_exact_text(&mut stream, "HTTP/1.1 100 Continue\r\n\r\n");
    let half = body.len() / 2;
    stream.write_all(&body[..half]).expect("send half the body");
    (stream, body[half..].to_vec())
}

/// Spawns `command`, which must run `serve` and print its listening line,
/// with stderr written to `log`. Returns None when the process exits
/// without printing the line.
fn spawn_server(mut command: Command, dir: tempfile::TempDir, db: PathBuf, log: &Path) -> Option<Server> {
    let log_file = fs::File::create(log).expect("create log file");
    command.env_remove("DSEVENTS_TOKEN").env_remove("DSEVENTS_DB").stdout(Stdio::piped()).stderr(log_file);
    let mut child = command.spawn().expect("start dsevents serve");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
    let Some(address) = line.trim().rsplit("http://").next().and_then(|text| text.parse().ok()) else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    Some(Server { child, address, db, dir })
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|metadata| metadata.len()).unwrap_or(0)
}

#[test]
fn declared_length_over_limit_is_413() {
    let server = Server::start(&["--token", TOKEN]);

    // Only the head is sent, and the response must come without the body.
    for length in ["1048577", "10737418240", "99999999999999999999999999"] {
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
            hook("email-bounced")
        );
        let reply = send_expect_close(&server, head.as_bytes());
        assert_eq!(reply.status, 413, "Content-Length {length}: {}", reply.body);
        assert!(reply.body.contains("limit"), "{}", reply.body);
    }
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 0);

    // A body of exactly the default limit (1 MiB) is accepted.
    let mut body = br#"{"dsid":"c1","email":"pat@example.com","padding":""#.to_vec();
    body.resize(1024 * 1024 - 2, b'x');
    body.extend_from_slice(b"\"}");
    let reply = server.post(&hook("email-opt-out"), &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let kept: i64 = server.count("SELECT body_bytes FROM deliveries");
    assert_eq!(kept, 1024 * 1024);

    assert_stores_delivery(&server, &hook("email-bounced"));
}

#[test]
fn chunked_body_over_limit_is_413() {
    let server = Server::start(&["--token", TOKEN, "--max-body", "1KiB"]);
    let head = format!("POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n", hook("email-bounced"));

    // Three chunks of 512 bytes pass the 1 KiB limit in the third.
    let mut bytes = head.clone().into_bytes();
    for _ in 0..3 {
        bytes.extend_from_slice(b"200\r\n");
        bytes.extend_from_slice(&[b' '; 512]);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    let reply = send_expect_close(&server, &bytes);
    assert_eq!(reply.status, 413, "{}", reply.body);

    // A chunk size too large for any integer is over the limit too.
    let mut bytes = head.clone().into_bytes();
    bytes.extend_from_slice(b"ffffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n");
    let reply = send_expect_close(&server, &bytes);
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 0);

    // A chunked body within the limit is stored as the decoded bytes.
    let body = bounce("chunked-1");
    let (first, second) = body.split_at(40);
    let mut bytes = head.into_bytes();
    for part in [first, second] {
        bytes.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    let reply = server.send_raw(&bytes);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stored: Vec<u8> = server.db().query_row("SELECT body FROM deliveries", [], |row| row.get(0)).unwrap();
    assert_eq!(stored, body.as_bytes());

    assert_stores_delivery(&server, &hook("email-bounced"));
}

/// Sends a request head one byte at a time on every stream until the
/// server responds or closes it, for at most 8 bytes. Returns how many
/// streams got 408.
fn dribble(mut streams: Vec<TcpStream>) -> usize {
    let head = b"POST /hooks/email-bounced HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut open: Vec<bool> = vec![true; streams.len()];
    let mut timed_out = 0;
    for byte in head.iter().take(8) {
        for (stream, open) in streams.iter_mut().zip(open.iter_mut()) {
            if !*open || !has_response_or_eof(stream) {
                continue;
            }
            *open = false;
            if read_until_closed(stream).starts_with(b"HTTP/1.1 408 ") {
                timed_out += 1;
            }
        }
        if !open.contains(&true) {
            break;
        }
        for (stream, open) in streams.iter_mut().zip(open.iter_mut()) {
            if *open && stream.write_all(&[*byte]).is_err() {
                *open = false; // reset by the server: closed, but not with 408
            }
        }
        thread::sleep(Duration::from_millis(800));
    }
    for (stream, open) in streams.iter_mut().zip(&open) {
        if *open && read_until_closed(stream).starts_with(b"HTTP/1.1 408 ") {
            timed_out += 1;
        }
    }
    timed_out
}

/// Returns true if the peer has sent data or closed `stream`, without
/// waiting.
fn has_response_or_eof(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("set non-blocking");
    let mut byte = [0u8; 1];
    let ready = match stream.peek(&mut byte) {
        Ok(_) => true,
        Err(error) => error.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).expect("set blocking");
    ready
}

#[test]
fn slow_clients_do_not_block_deliveries() {
    const IDLE: usize = 100;
    const DRIBBLING: usize = 100;
    const DELIVERIES: usize = 20;
    let server = Server::start(&["--read-timeout", "2", "--idle-timeout", "2"]);

    // 100 connections that send nothing, and 100 that send their head a
    // byte at a time, one every 0.8 s. The interval keeps the writes clear
    // of the 2 s deadline, so no byte is written after the server responded
    // (that would reset the connection and discard the response).
    let mut idle: Vec<TcpStream> = (0..IDLE).map(|_| server.connect()).collect();
    let dribbling: Vec<TcpStream> = (0..DRIBBLING).map(|_| server.connect()).collect();
    let dribbler = thread::spawn(move || dribble(dribbling));

    // Real deliveries from another client, each completed in well under
    // the 2 s timeouts.
    let mut slowest = Duration::ZERO;
    for index in 0..DELIVERIES {
        let started = Instant::now();
        let reply = server.post("/hooks/email-bounced", bounce(&format!("real-{index}")).as_bytes());
        let elapsed = started.elapsed();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(elapsed < Duration::from_secs(1), "delivery {index} took {elapsed:?}");
        slowest = slowest.max(elapsed);
    }
    eprintln!("slowest of {DELIVERIES} deliveries beside {} slow connections: {slowest:?}", IDLE + DRIBBLING);

    // The server closes every slow connection once its timeout passes: the
    // idle ones silently, the dribbling ones with 408.
    let closing_started = Instant::now();
    for stream in &mut idle {
        let rest = read_until_closed(stream);
        assert!(rest.is_empty(), "idle connection got {}", String::from_utf8_lossy(&rest));
    }
    let timed_out = dribbler.join().expect("dribbler thread");
    assert_eq!(timed_out, DRIBBLING, "dribbling connections that got 408");
    assert!(closing_started.elapsed() < Duration::from_secs(5), "closing took {:?}", closing_started.elapsed());
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), DELIVERIES as i64);

    assert_stores_delivery(&server, "/hooks/email-bounced");
}

#[test]
fn oversized_head_is_431() {
    let server = Server::start(&[]);

    let long_header = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {}\r\n\r\n", "a".repeat(20 * 1024));
    let reply = send_expect_close(&server, long_header.as_bytes());
    assert_eq!(reply.status, 431, "{}", reply.body);

    let mut many = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_string();
    for index in 0..100 {
        many.push_str(&format!("X-Header-{index}: {index}\r\n"));
    }
    many.push_str("\r\n");
    let reply = send_expect_close(&server, many.as_bytes());
    assert_eq!(reply.status, 431, "{}", reply.body);

    // A head that has not ended by the 16 KiB limit gets 431 at once, not
    // 408 when the read timeout passes. 32 KiB stays below what the server
    // drains before closing, so the close cannot reset the connection.
    let mut stream = server.connect();
    let mut unfinished = b"GET /healthz HTTP/1.1\r\nX-Endless: ".to_vec();
    unfinished.resize(32 * 1024, b'z');
    stream.write_all(&unfinished).unwrap();
    let reply = read_reply(&mut stream).expect("response to an unfinished head");
    assert_eq!(reply.status, 431, "{}", reply.body);

    assert_stores_delivery(&server, "/hooks/email-bounced");
}

#[test]
fn expect_100_continue_is_honoured() {
    let server = Server::start(&["--token", TOKEN]);
    let body = bounce("expect-1");
    let mut stream = server.connect();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        hook("email-bounced"),
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    read_exact_text(&mut stream, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).unwrap();
    let reply = read_reply(&mut stream).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Without the token, the sender learns at once and sends no body.
    let head = format!(
        "POST /hooks/email-bounced HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let reply = send_expect_close(&server, head.as_bytes());
    assert_eq!(reply.status, 401, "{}", reply.body);

    for expectation in ["something-else", "100-continue, and-more"] {
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: {expectation}\r\nContent-Length: {}\r\n\r\n{body}",
            hook("email-bounced"),
            body.len()
        );
        let reply = send_expect_close(&server, head.as_bytes());
        assert_eq!(reply.status, 417, "Expect: {expectation}: {}", reply.body);
    }
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 1);

    assert_stores_delivery(&server, &hook("email-bounced"));
}

#[test]
fn ambiguous_framing_is_400_and_closes() {
    let server = Server::start(&["--token", TOKEN]);
    let smuggled = delivery_request(&hook("email-bounced"), "smuggled");
    let cases: [(&str, &str, &[u8]); 5] = [
        ("Transfer-Encoding and Content-Length", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        ("non-numeric Content-Length", "Content-Length: 5x\r\n", b"{}   "),
        ("negative Content-Length", "Content-Length: -1\r\n", b""),
        ("two different Content-Lengths", "Content-Length: 2\r\nContent-Length: 7\r\n", b"{}"),
        ("a list of different Content-Lengths", "Content-Length: 2, 7\r\n", b"{}"),
    ];

    for (case, headers, body) in cases {
        let mut bytes =
            format!("POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n", hook("email-bounced")).into_bytes();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(&smuggled);
        let reply = send_expect_close(&server, &bytes);
        assert_eq!(reply.status, 400, "{case}: {}", reply.body);
        assert_eq!(reply.header("Connection"), Some("close"), "{case}");
    }
    // httparse accepts LF alone as a line ending, which would end this head
    // at the blank line before the smuggled request.
    let mut bytes = format!("POST {} HTTP/1.1\nHost: 127.0.0.1\n\n", hook("email-bounced")).into_bytes();
    bytes.extend_from_slice(&smuggled);
    let reply = send_expect_close(&server, &bytes);
    assert_eq!(reply.status, 400, "LF line endings: {}", reply.body);

    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 0, "a smuggled request was stored");

    assert_stores_delivery(&server, &hook("email-bounced"));
}

#[test]
fn requests_rejected_before_body_close() {
    let server = Server::start(&["--token", TOKEN, "--max-body", "1KiB"]);
    // Each rejected request carries a body that is itself a valid delivery.
    let smuggled = delivery_request(&hook("email-bounced"), "in-the-body");
    let mut oversized = smuggled.clone();
    oversized.resize(2048, b' ');
    let cases: [(u16, &str, String, &[u8]); 4] = [
        (401, "POST", "/hooks/email-bounced?token=wrong".to_string(), &smuggled),
        (404, "POST", format!("/nowhere?token={TOKEN}"), &smuggled),
        (405, "PUT", hook("email-bounced"), &smuggled),
        (413, "POST", hook("email-bounced"), &oversized),
    ];

    for (status, method, path, body) in cases {
        let mut bytes =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        let reply = send_expect_close(&server, &bytes);
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        assert_eq!(reply.header("Connection"), Some("close"), "{method} {path}");
    }
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 0, "a request hidden in a body was stored");

    assert_stores_delivery(&server, &hook("email-bounced"));
}

#[test]
fn bad_bodies_kept_with_202() {
    let server = Server::start(&["--token", TOKEN]);
    let deep_nesting = "[".repeat(100_000).into_bytes();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("email-bounced", b"{\"dsid\":".to_vec()),
        ("email-bounced", b"not json at all".to_vec()),
        ("email-bounced", b"[1,2,3]".to_vec()),
        ("email-bounced", b"\"a string\"".to_vec()),
        ("email-bounced", b"null".to_vec()),
        ("email-bounced", Vec::new()),
        ("email-bounced", br#"{"is_spam_complaint":"maybe"}"#.to_vec()),
        ("email-bounced", br#"{"date":[2026]}"#.to_vec()),
        ("email-bounced", br#"{"date":-9223372036854775808}"#.to_vec()),
        ("lead-created", br#"{"id":"abc","dsid":"c1"}"#.to_vec()),
        ("lead-created", br#"{"id":1e400}"#.to_vec()),
        ("lead-created", br#"{"id":{"nested":true}}"#.to_vec()),
        ("sms-opt-out", b"\xff\xfe{\x00".to_vec()),
        ("segment-created", deep_nesting.clone()),
        ("no-such-kind", br#"{"dsid":"c1"}"#.to_vec()),
    ];

    for (index, (kind, body)) in bodies.iter().enumerate() {
        let reply = server.post(&hook(kind), body);
        assert_eq!(reply.status, 202, "bad body {index} for {kind}: {}", reply.body);
        assert!(reply.json()["reason"].is_string(), "bad body {index}: {}", reply.body);
        let id = reply.json()["id"].as_i64().expect("id in the response");
        let kept: Vec<u8> =
            server.db().query_row("SELECT body FROM deliveries WHERE id = ?1", [id], |row| row.get(0)).unwrap();
        assert_eq!(&kept, body, "bad body {index} not kept byte for byte");
    }
    let quarantined = server.count("SELECT count(*) FROM deliveries WHERE outcome = 'quarantined' AND error IS NOT NULL");
    assert_eq!(quarantined, bodies.len() as i64 - 1);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE outcome = 'unknown_kind'"), 1);

    assert_stores_delivery(&server, &hook("email-bounced"));
}

#[test]
fn deeply_nested_json_is_kept() {
    let server = Server::start(&[]);
    // 127 levels, the deepest serde_json parses, inside a stored field.
    let nested = format!("{}{}", "[".repeat(126), "]".repeat(126));
    let body = format!(r#"{{"dsId":"c1","email":"pat@example.com","extendedProperties":{nested}}}"#);
    let reply = server.post("/hooks/contact-updated", body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = format!(r#"[{nested},{{"dsId":"c1"}}]"#);
    let reply = server.post("/hooks/contact-update-failed", body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Deeper than that is kept raw, with the parser's reason.
    let reply = server.post("/hooks/contact-updated", "{\"a\":".repeat(100_000).as_bytes());
    assert_eq!(reply.status, 202, "{}", reply.body);

    assert_stores_delivery(&server, "/hooks/email-bounced");
}

#[test]
fn lone_surrogate_is_replaced_and_raw_kept() {
    let server = Server::start(&[]);
    let body = br#"{"dsid":"c1","mobile":"+15550100","message":"half an emoji \ud83d here, a low half \udc00, a pair \ud83d\ude00"}"#;
    let reply = server.post("/hooks/text-reply", body);
    assert_eq!(reply.status, 200, "{}", reply.body);

    let db = server.db();
    let message: String = db.query_row("SELECT message FROM text_replies", [], |row| row.get(0)).unwrap();
    assert_eq!(message, "half an emoji \u{FFFD} here, a low half \u{FFFD}, a pair \u{1F600}");
    let raw: Vec<u8> = db.query_row("SELECT body FROM deliveries", [], |row| row.get(0)).unwrap();
    assert_eq!(raw, body.to_vec());

    // Bytes that are not UTF-8 inside a string are replaced the same way.
    let body = b"{\"dsid\":\"c2\",\"mobile\":\"+15550101\",\"message\":\"caf\xe9\"}";
    let reply = server.post("/hooks/text-reply", body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let message: String =
        db.query_row("SELECT message FROM text_replies WHERE dsid = 'c2'", [], |row| row.get(0)).unwrap();
    assert_eq!(message, "caf\u{FFFD}");
    let raw: Vec<u8> = db.query_row("SELECT body FROM deliveries WHERE dsid = 'c2'", [], |row| row.get(0)).unwrap();
    assert_eq!(raw, body.to_vec());

    assert_stores_delivery(&server, "/hooks/email-bounced");
}

#[test]
fn retried_bodies_are_kept_and_marked() {
    let server = Server::start(&[]);
    let opt_out = br#"{"dsid":"contact-a","email":"a@example.com"}"#;
    let bounce_body = bounce("retried-1");
    let click = br#"{"id":"link-7"}"#;

    for (path, body) in [
        ("/hooks/email-opt-out", &opt_out[..]),
        ("/hooks/email-bounced", bounce_body.as_bytes()),
        ("/hooks/link-clicked", &click[..]),
    ] {
        let first = server.post(path, body);
        assert_eq!(first.status, 200, "{}", first.body);
        let second = server.post(path, body);
        assert_eq!(second.status, 200, "{}", second.body);
        assert_eq!(second.json()["duplicate_of"], first.json()["id"], "{path}: {}", second.body);
    }

    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 6);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE duplicate_of IS NOT NULL"), 3);
    assert_eq!(server.count("SELECT count(*) FROM email_opt_outs"), 2);
    assert_eq!(server.count("SELECT count(*) FROM opt_outs"), 1);
    assert_eq!(server.count("SELECT count(*) FROM current_consent WHERE consent = 'opted-out'"), 1);
    assert_eq!(server.count("SELECT count(*) FROM email_bounces"), 2);
    assert_eq!(
        server.count(
            "SELECT count(*) FROM email_bounces b JOIN deliveries d ON d.id = b.delivery_id AND d.duplicate_of IS NULL"
        ),
        1
    );
    assert_eq!(server.count("SELECT count(*) FROM link_clicks"), 2);

    assert_stores_delivery(&server, "/hooks/email-bounced");
}

#[test]
fn opt_out_after_opt_in_not_duplicate() {
    let server = Server::start(&[]);
    // Email opt-outs and opt-ins have the same body shape, so all three
    // bodies are byte for byte identical.
    let body = br#"{"dsid":"contact-b","email":"b@example.com"}"#;

    let first = server.post("/hooks/email-opt-out", body);
    assert_eq!(first.status, 200, "{}", first.body);
    let opt_in = server.post("/hooks/email-opt-in", body);
    assert_eq!(opt_in.status, 200, "{}", opt_in.body);
    assert!(opt_in.json().get("duplicate_of").is_none(), "{}", opt_in.body);
    let again = server.post("/hooks/email-opt-out", body);
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(again.json().get("duplicate_of").is_none(), "opt-out after opt-in marked as a retry: {}", again.body);

    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE duplicate_of IS NOT NULL"), 0);
    assert_eq!(server.count("SELECT count(*) FROM opt_outs"), 2);
    let consent: String = server
        .db()
        .query_row("SELECT consent FROM current_consent WHERE dsid = 'contact-b' AND channel = 'email'", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(consent, "opted-out");

    // A retry of the last opt-out is still a duplicate.
    let retry = server.post("/hooks/email-opt-out", body);
    assert_eq!(retry.json()["duplicate_of"], again.json()["id"], "{}", retry.body);

    assert_stores_delivery(&server, "/hooks/email-bounced");
}

#[test]
fn duplicate_window_zero_marks_nothing() {
    let server = Server::start(&["--duplicate-window", "0"]);
    let body = bounce("window-0");
    for _ in 0..2 {
        let reply = server.post("/hooks/email-bounced", body.as_bytes());
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE duplicate_of IS NOT NULL"), 0);
}

#[test]
fn token_never_logged_or_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let log = dir.path().join("serve.log");
    let wrong = "wrong-guess-5d81e0";
    let mut command = Command::new(BIN);
    command.args(["serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--db"]).arg(&db).env("RUST_LOG", "debug");
    let mut server = spawn_server(command, dir, db, &log).expect("serve started");

    let mut replies = vec![
        server.post(&hook("email-bounced"), bounce("logged-1").as_bytes()),
        server.post(&hook("lead-created"), b"{\"id\":\"not a number\"}"),
        server.post(&format!("/hooks/email-bounced?token={wrong}"), b"{}"),
        server.post(&format!("/nowhere?token={TOKEN}"), b"{}"),
        server.request("GET", &hook("email-bounced"), &[], b""),
        server.request(
            "POST",
            "/hooks/email-bounced",
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            bounce("logged-2").as_bytes(),
        ),
        server.request("POST", "/hooks/email-bounced", &[("Authorization", &format!("Bearer {wrong}"))], b"{}"),
    ];
    replies.push(server.send_raw(format!("POST {} HTTP/1.1\r\nContent-Length: x\r\n\r\n", hook("a")).as_bytes()));
    let statuses: Vec<u16> = replies.iter().map(|reply| reply.status).collect();
    assert_eq!(statuses, [200, 202, 401, 404, 405, 200, 401, 400]);
    for reply in &replies {
        assert!(!reply.body.contains(TOKEN), "token in a response: {}", reply.body);
        assert!(!reply.body.contains(wrong), "guessed token in a response: {}", reply.body);
        assert!(reply.headers.iter().all(|(_, value)| !value.contains(TOKEN)), "secret in headers: {reply:?}");
    }

    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10)).expect("serve exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let logged = fs::read_to_string(&log).unwrap();
    assert!(logged.contains("path=/hooks/email-bounced status=200"), "debug request log missing:\n{logged}");
    assert!(!logged.contains(TOKEN), "token in the log:\n{logged}");
    assert!(!logged.contains(wrong), "guessed token in the log:\n{logged}");
}

#[test]
fn non_loopback_without_token_fails() {
    // Checked before the socket is bound, so nothing listens on 0.0.0.0.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let db_text = db.to_str().unwrap();
    let args = ["serve", "--listen", "0.0.0.0:0", "--db", db_text];
    let output = common::run(&args);
    assert_eq!(output.status.code(), Some(2), "{}", common::describe(&args, &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--token"), "{stderr}");
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");
    assert!(!db.exists(), "a database was created by a failed start");
}

#[test]
fn allow_from_rejects_other_sources() {
    let server = Server::start(&["--allow-from", "10.0.0.0/8"]);
    let reply = send_expect_close(&server, &delivery_request("/hooks/email-bounced", "from-outside"));
    assert_eq!(reply.status, 403, "{}", reply.body);
    let reply = server.request("GET", "/healthz", &[], b"");
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 0);

    let server = Server::start(&["--allow-from", "10.0.0.0/8", "--allow-from", "127.0.0.1"]);
    assert_stores_delivery(&server, "/hooks/email-bounced");
}

/// Starts `serve` in its own mount namespace with its database directory
/// on a tmpfs of `size`, so the test can fill the disk without touching
/// other filesystems. Returns None when `unshare` is missing or mounting
/// is not permitted, which needs root or CAP_SYS_ADMIN.
fn start_on_small_tmpfs(size: &str, log: &Path) -> Option<Server> {
    if Command::new("unshare").arg("--version").output().is_err() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount_point = dir.path().to_str().unwrap().to_string();
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@""#)
        .args(["sh", size, &mount_point, BIN, "serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(format!("{mount_point}/events.db"))
        .env("RUST_LOG", "info");
    // The tmpfs is visible only inside the server's namespace; the test
    // reaches it through the process's root in /proc.
    let placeholder = PathBuf::new();
    let mut server = spawn_server(command, dir, placeholder, log)?;
    server.db = PathBuf::from(format!("/proc/{}/root{mount_point}/events.db", server.pid()));
    Some(server)
}

/// Copies the database of a server on a private tmpfs, with its WAL, and
/// opens the copy. SQLite cannot open the original through /proc/PID/root
/// because it resolves that link to the host's root. The copy is
/// consistent while no request is in flight.
fn snapshot(server: &Server) -> (tempfile::TempDir, rusqlite::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("events.db");
    fs::copy(&server.db, &copy).expect("copy database");
    let wal = PathBuf::from(format!("{}-wal", server.db.display()));
    if wal.exists() {
        fs::copy(&wal, dir.path().join("events.db-wal")).expect("copy WAL");
    }
    let connection = rusqlite::Connection::open(&copy).expect("open copy");
    (dir, connection)
}

fn bounces_with_message_id(connection: &rusqlite::Connection, message_id: &str) -> i64 {
    connection
        .query_row("SELECT count(*) FROM email_bounces WHERE message_id = ?1", [message_id], |row| row.get(0))
        .expect("count bounces")
}

#[test]
fn full_disk_is_503_and_recovers() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("serve.log");
    let Some(server) = start_on_small_tmpfs("4m", &log) else {
        eprintln!(
            "SKIPPED full_disk_is_503_and_recovers: unshare or mounting a tmpfs in a new mount namespace failed:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        return;
    };
    let reply = server.post("/hooks/email-bounced", bounce("before-full").as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Fill the filesystem with a ballast file.
    let ballast = server.db.with_file_name("ballast");
    let mut file = fs::File::create(&ballast).expect("create ballast");
    let block = vec![0u8; 64 * 1024];
    let mut filled = false;
    for _ in 0..(4 * 1024 / 64 + 16) {
        if let Err(error) = file.write_all(&block).and_then(|()| file.sync_all()) {
            assert_eq!(error.raw_os_error(), Some(28), "expected ENOSPC, got {error}");
            filled = true;
            break;
        }
    }
    assert!(filled, "the 4 MiB tmpfs never filled up");
    drop(file);

    // Deliveries now fail, and each gets 503 with a reason and Retry-After.
    let mut rejected = None;
    for index in 0..200 {
        let message_id = format!("full-{index}-{}", "x".repeat(2000));
        let reply = server.post("/hooks/email-bounced", bounce(&message_id).as_bytes());
        if reply.status == 503 {
            rejected = Some((message_id, reply));
            break;
        }
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let (rejected_id, rejected) = rejected.expect("no delivery on a full disk got 503");
    assert!(rejected.header("Retry-After").is_some(), "{rejected:?}");
    assert_eq!(rejected.body.trim_end().lines().count(), 1, "{}", rejected.body);
    assert!(rejected.json()["error"].as_str().unwrap().contains("full"), "{}", rejected.body);
    let bad = server.post("/hooks/email-bounced", b"not json");
    assert_eq!(bad.status, 503, "a bad body cannot be kept on a full disk either: {}", bad.body);
    let logged = fs::read_to_string(&log).unwrap();
    assert!(logged.contains("not stored"), "failure not logged:\n{logged}");
    assert!(logged.contains("database or disk is full"), "cause not logged:\n{logged}");
    assert_eq!(logged.matches("not stored").count(), 1, "each failure logged again:\n{logged}");
    let health = server.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 503, "health shows the failing store: {}", health.body);
    assert!(health.body.contains("full"), "{}", health.body);

    // Space returns: the same process stores deliveries again.
    fs::remove_file(&ballast).expect("remove ballast");
    let reply = server.post("/hooks/email-bounced", bounce("after-space-returned").as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = server.request("GET", "/healthz", &[], b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let logged = fs::read_to_string(&log).unwrap();
    assert!(logged.contains("writes succeed again after 2 deliveries got a 503 response"), "{logged}");

    let (_copy, connection) = snapshot(&server);
    assert_eq!(bounces_with_message_id(&connection, "before-full"), 1);
    assert_eq!(bounces_with_message_id(&connection, "after-space-returned"), 1);
    assert_eq!(bounces_with_message_id(&connection, &rejected_id), 0, "a delivery that got 503 was stored");
}

#[test]
fn held_write_lock_is_503_then_recovers() {
    let server = Arc::new(Server::start(&[]));
    // A SQLite tool holding a write transaction open, such as DB Browser
    // with unsaved changes.
    let blocker = server.db();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    // One delivery keeps the writer waiting out its 5 s busy timeout while
    // three more queue behind it and are written as one batch.
    let started = Instant::now();
    let posts: Vec<_> = (0..4)
        .map(|index| {
            let server = Arc::clone(&server);
            let post = thread::spawn(move || {
                let reply = server.post("/hooks/email-bounced", bounce(&format!("locked-{index}")).as_bytes());
                (reply, started.elapsed())
            });
            if index == 0 {
                thread::sleep(Duration::from_millis(200));
            }
            post
        })
        .collect();
    for post in posts {
        let (reply, elapsed) = post.join().expect("post thread");
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(reply.header("Retry-After").is_some(), "{reply:?}");
        assert!(reply.json()["error"].as_str().unwrap().contains("locked"), "{}", reply.body);
        // Two busy timeouts at most: a failed batch is not retried one
        // delivery at a time, each waiting 5 s again.
        assert!(elapsed < Duration::from_secs(12), "503 only after {elapsed:?}");
    }

    blocker.execute_batch("COMMIT").unwrap();
    assert_stores_delivery(&server, "/hooks/email-bounced");
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 1);
}

#[test]
fn head_response_has_no_body() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    stream
        .write_all(
            b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
              HEAD /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
              GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let responses = String::from_utf8(read_until_closed(&mut stream)).unwrap();
    let parts: Vec<&str> = responses.split("\r\n\r\n").collect();
    assert_eq!(parts.len(), 4, "{responses}");
    assert!(parts[0].starts_with("HTTP/1.1 200 "), "{responses}");
    assert!(parts[1].starts_with("HTTP/1.1 404 "), "{responses}");
    assert!(parts[2].starts_with("HTTP/1.1 200 "), "{responses}");
    assert!(parts[3].contains("\"status\":\"ok\""), "{responses}");
}

/// The `PRAGMA journal_size_limit` that serve sets, in bytes.
const JOURNAL_SIZE_LIMIT: u64 = 96 * 1024 * 1024;

#[test]
fn long_reader_keeps_ingest_and_wal_bounded() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 300;
    let server = Arc::new(Server::start(&[]));
    let wal = PathBuf::from(format!("{}-wal", server.db.display()));
    let failures = Arc::new(AtomicUsize::new(0));

    // Each round posts the same amount of data from several clients at once.
    let post_round = |round: usize| {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let server = Arc::clone(&server);
                let failures = Arc::clone(&failures);
                thread::spawn(move || {
                    let padding = "p".repeat(40_000);
                    for index in 0..PER_CLIENT {
                        let reply = server.post(
                            "/hooks/email-bounced",
                            bounce(&format!("r{round}-c{client}-{index}-{padding}")).as_bytes(),
                        );
                        if reply.status != 200 {
                            failures.fetch_add(1, Ordering::SeqCst);
                            eprintln!("delivery got {}: {}", reply.status, reply.body);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("client thread");
        }
    };

    // A reader such as sqlite3 keeps a read transaction open during load.
    let reader = server.db();
    reader.execute_batch("BEGIN").unwrap();
    let seen_before: i64 = reader.query_row("SELECT count(*) FROM deliveries", [], |row| row.get(0)).unwrap();
    post_round(1);
    assert_eq!(failures.load(Ordering::SeqCst), 0, "deliveries failed beside a reader");
    let seen_during: i64 = reader.query_row("SELECT count(*) FROM deliveries", [], |row| row.get(0)).unwrap();
    assert_eq!(seen_during, seen_before, "the reader's snapshot changed");
    let wal_with_reader = file_size(&wal);
    reader.execute_batch("COMMIT").unwrap();
    // The reader kept checkpoints from resetting the WAL, so it grew past
    // the journal size limit that serve sets.
    assert!(wal_with_reader > JOURNAL_SIZE_LIMIT, "WAL only {wal_with_reader} bytes; the load is too small to test");

    // Once the reader is gone, a checkpoint completes, the WAL starts over
    // and is truncated to the limit; the same load again keeps it there.
    post_round(2);
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let wal_after = file_size(&wal);
    eprintln!("WAL bytes: {wal_with_reader} with the reader, {wal_after} after a second round without it");
    assert!(wal_after <= JOURNAL_SIZE_LIMIT, "WAL still {wal_after} bytes after the reader ended (was {wal_with_reader})");
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), (2 * CLIENTS * PER_CLIENT) as i64);

    assert_stores_delivery(&server, "/hooks/email-bounced");
}

/// Runs the graceful-shutdown check for one signal.
fn check_graceful_shutdown(signal: &str) {
    let mut server = Server::start(&[]);
    let wal = PathBuf::from(format!("{}-wal", server.db.display()));

    // An idle kept-alive connection must not hold the shutdown back.
    let mut idle = server.connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    assert_eq!(read_reply(&mut idle).unwrap().status, 200);

    let bodies: Vec<String> = (0..3).map(|index| bounce(&format!("in-flight-{signal}-{index}"))).collect();
    let mut uploads: Vec<(TcpStream, Vec<u8>)> = bodies.iter().map(|body| start_upload(&server, body.as_bytes())).collect();

    server.signal(signal);
    let refused = wait_for(Duration::from_secs(5), || TcpStream::connect(server.address).is_err());
    assert!(refused, "new connections still accepted after SIG{signal}");

    for (stream, rest) in &mut uploads {
        stream.write_all(rest).expect("send the rest of the body");
        let reply = read_reply(stream).expect("response to an upload in flight");
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("Connection"), Some("close"));
    }
    let finished = Instant::now();
    let status = server.wait_exit(Duration::from_secs(10)).expect("serve exits after the uploads finish");
    assert!(status.success(), "exit status {status:?}");
    eprintln!("SIG{signal}: exited {:?} after the last upload finished", finished.elapsed());
    assert!(read_until_closed(&mut idle).is_empty());

    let db = server.db();
    for (index, body) in bodies.iter().enumerate() {
        let stored: i64 =
            db.query_row("SELECT count(*) FROM deliveries WHERE body = ?1", [body.as_bytes()], |row| row.get(0)).unwrap();
        assert_eq!(stored, 1, "upload {index} in flight at SIG{signal} not stored");
    }
    drop(db);
    // The WAL was checkpointed into the database file and truncated.
    assert_eq!(file_size(&wal), 0, "WAL not checkpointed at shutdown");
}

#[test]
fn sigterm_finishes_uploads_in_flight() {
    check_graceful_shutdown("TERM");
}

#[test]
fn sigint_finishes_uploads_in_flight() {
    check_graceful_shutdown("INT");
}

#[test]
fn second_signal_exits_at_once() {
    let mut server = Server::start(&[]);
    let body = bounce("never-finished");
    let (_stream, _rest) = start_upload(&server, body.as_bytes());

    server.signal("TERM");
    let refused = wait_for(Duration::from_secs(5), || TcpStream::connect(server.address).is_err());
    assert!(refused, "new connections still accepted after SIGTERM");
    // The upload in flight would hold a graceful stop; a second signal ends it.
    assert!(server.child.try_wait().unwrap().is_none(), "serve exited before its upload finished");
    let sent = Instant::now();
    server.signal("INT");
    let status = server.wait_exit(Duration::from_secs(2)).expect("serve exits at once on a second signal");
    assert!(!status.success(), "exit status {status:?}");
    eprintln!("second signal: exited {:?} after it, status {status:?}", sent.elapsed());
}

#[test]
fn half_closed_uploads_store_nothing() {
    let server = Server::start(&[]);
    // A head and part of a body, then the client shuts its side.
    for _ in 0..20 {
        let mut stream = server.connect();
        stream.write_all(b"POST /hooks/email-bounced HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"dsid\":").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        assert!(read_until_closed(&mut stream).is_empty());
    }
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 0);
    assert_stores_delivery(&server, "/hooks/email-bounced");
}
