//! Connection handling of `serve`'s event loop under hostile and unusual
//! clients: chunk sizes that overflow, HTTP/1.0 keep-alive, clients that
//! never read, shutdown with pipelined deliveries, and a limit of open
//! files below --max-connections.
//!
//! Every test runs the real binary on 127.0.0.1 with a temporary database.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{read_reply, wait_for, Server};

/// Returns a bounce body that its message id makes unique.
fn bounce(message_id: &str) -> String {
    format!(
        r#"{{"dsid":"c0ffee00c0ffee00c0ffee00c0ffee00","email":"pat@example.com","date":"2026-03-01T14:05:09","messageid":"{message_id}","is_spam_complaint":"false","reason":"Permanent Delivery Failure"}}"#
    )
}

/// Returns a complete bounce delivery request with Content-Length framing.
fn delivery_request(message_id: &str) -> Vec<u8> {
    let body = bounce(message_id);
    format!(
        "POST /hooks/email-bounced HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads from `stream` until the peer closes it or resets it, for at most
/// `limit`. Returns the bytes read.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(limit)).expect("set read timeout");
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return received,
            Ok(count) => received.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return received,
            Err(error) => panic!("connection still open after {limit:?} ({error}); {} bytes read", received.len()),
        }
    }
}

/// Checks that the server is alive and returns 200 for /healthz.
fn assert_healthy(server: &Server) {
    let reply = server.request("GET", "/healthz", &[], b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Returns the resident memory of process `pid`, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .expect("VmRSS in /proc status")
}

/// A chunk size of 2^64 - 1 after a first chunk made `body.len() + size`
/// overflow. A debug build panicked and the whole server exited. A release
/// build wrapped the sum to a small number, passed the limit check, and
/// buffered every following byte in memory until the body timeout.
#[test]
fn chunk_size_overflow_is_413() {
    let server = Server::start(&["--max-body", "1KiB"]);
    let mut stream = server.connect();
    stream
        .write_all(
            b"POST /hooks/email-bounced HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
              1\r\na\r\nffffffffffffffff\r\n",
        )
        .expect("send head and chunk sizes");
    // These bytes pass the 1 KiB limit. The write may fail once the server
    // has closed the connection.
    let _ = stream.write_all(&[b'b'; 4096]);

    let reply = read_reply(&mut stream).expect("a response to the oversized chunk");
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(reply.header("Connection"), Some("close"));
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 0);
    assert_healthy(&server);
}

/// An HTTP/1.0 client assumes the connection closes after a response
/// unless the response contains `Connection: keep-alive`. The server kept
/// such connections open without sending that header.
#[test]
fn http10_keep_alive_is_confirmed() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    let request = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";

    stream.write_all(request).expect("send first request");
    let first = read_reply(&mut stream).expect("first response");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("Connection"), Some("keep-alive"));

    stream.write_all(request).expect("send second request");
    let second = read_reply(&mut stream).expect("second response on the same connection");
    assert_eq!(second.status, 200, "{}", second.body);

    // Without keep-alive an HTTP/1.0 connection closes after one response.
    let mut plain = server.connect();
    plain.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").expect("send HTTP/1.0 request");
    let reply = read_reply(&mut plain).expect("response");
    assert_eq!(reply.header("Connection"), Some("close"));
    assert!(read_until_closed(&mut plain, Duration::from_secs(5)).is_empty());
}

/// A client that sends a delivery, then pipelines requests without reading
/// any response, fills its socket buffers. The server then stops reading
/// from it, closes it after the write timeout, and serves other clients
/// meanwhile.
#[test]
fn non_reading_pipeliner_is_bounded() {
    const METRICS_REQUESTS: usize = 3000;
    let server = Server::start(&["--read-timeout", "2"]);
    let before_kib = resident_kib(server.pid());

    let mut pipeliner = server.connect();
    pipeliner.set_write_timeout(Some(Duration::from_secs(3))).expect("set write timeout");
    let mut requests = delivery_request("pipelined");
    for _ in 0..METRICS_REQUESTS {
        requests.extend_from_slice(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    }
    // The server stops reading once its responses fill the socket, so the
    // write may stop with a timeout or a reset part way through.
    let _ = pipeliner.write_all(&requests);
    let written = Instant::now();

    let started = Instant::now();
    assert_healthy(&server);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "/healthz took {:?} next to the non-reading client",
        started.elapsed()
    );
    let delivered = wait_for(Duration::from_secs(5), || server.count("SELECT count(*) FROM deliveries") == 1);
    assert!(delivered, "the pipelined delivery was not stored");

    // Past the 2 s write timeout, the server has given up on the client.
    thread::sleep(Duration::from_secs(5).saturating_sub(written.elapsed()));
    let grown_kib = resident_kib(server.pid()).saturating_sub(before_kib);
    assert!(grown_kib < 16 * 1024, "resident memory grew by {grown_kib} KiB for one client");
    let received = read_until_closed(&mut pipeliner, Duration::from_secs(5));
    let responses = String::from_utf8_lossy(&received).matches("HTTP/1.1 200 ").count();
    assert!(responses >= 1, "not even the delivery was answered");
    assert!(responses < 1 + METRICS_REQUESTS, "all {responses} responses written to a client that did not read");
    assert_healthy(&server);
}

/// SIGTERM while three clients pipeline deliveries: every delivery that
/// got a 2xx response is in the database.
#[test]
fn shutdown_stores_every_acknowledged_pipelined_delivery() {
    const CLIENTS: usize = 3;
    const PER_CLIENT: usize = 300;
    let mut server = Server::start(&[]);

    let readers: Vec<thread::JoinHandle<Vec<u8>>> = (0..CLIENTS)
        .map(|client| {
            let mut stream = server.connect();
            thread::spawn(move || {
                let mut requests = Vec::new();
                for index in 0..PER_CLIENT {
                    requests.extend_from_slice(&delivery_request(&format!("sd-{client}-{index}")));
                }
                // The server may close before it has read every request.
                let _ = stream.write_all(&requests);
                let _ = stream.shutdown(Shutdown::Write);
                read_until_closed(&mut stream, Duration::from_secs(30))
            })
        })
        .collect();

    thread::sleep(Duration::from_millis(150));
    server.signal("TERM");
    let outputs: Vec<String> = readers
        .into_iter()
        .map(|reader| String::from_utf8_lossy(&reader.join().expect("reader thread")).into_owned())
        .collect();
    let status = server.wait_exit(Duration::from_secs(20)).expect("serve exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");

    let acknowledged: Vec<i64> = outputs
        .iter()
        .flat_map(|output| output.split("\"id\":").skip(1))
        .map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("numeric delivery id")
        })
        .collect();
    let acknowledged_responses: usize = outputs.iter().map(|output| output.matches("HTTP/1.1 200 ").count()).sum();
    assert_eq!(acknowledged.len(), acknowledged_responses);
    assert!(!acknowledged.is_empty(), "no delivery acknowledged before SIGTERM");

    let db = server.db();
    for id in &acknowledged {
        let stored: i64 = db
            .query_row("SELECT count(*) FROM deliveries WHERE id = ?1", [id], |row| row.get(0))
            .expect("count deliveries");
        assert_eq!(stored, 1, "delivery {id} got 200 but is not stored");
    }
    let stored_total: i64 =
        db.query_row("SELECT count(*) FROM deliveries", [], |row| row.get(0)).expect("count deliveries");
    eprintln!(
        "{} of {} pipelined deliveries acknowledged, {stored_total} stored",
        acknowledged.len(),
        CLIENTS * PER_CLIENT
    );
}

/// Returns how many file descriptors process `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list /proc fd directory").count()
}

/// Connections closed by their clients while their delivery is being
/// committed are stored and then closed by the server, which frees their
/// slot: with --max-connections 2, ten of them one after another leave the
/// server with its starting descriptors and able to serve another client.
#[test]
fn closed_while_committing_frees_slot() {
    let server = Server::start(&["--max-connections", "2"]);
    // The first delivery opens the WAL and its index; the count after it,
    // once the warm-up connection has closed, is the idle count.
    let reply = server.post("/hooks/email-bounced", bounce("warm-up").as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    thread::sleep(Duration::from_millis(300));
    let idle_descriptors = open_descriptors(server.pid());
    for index in 0..10 {
        let mut stream = server.connect();
        stream.write_all(&delivery_request(&format!("closed-{index}"))).expect("send delivery");
        drop(stream);

        let stored = wait_for(Duration::from_secs(10), || server.count("SELECT count(*) FROM deliveries") == index + 2);
        assert!(stored, "delivery {index} not stored after its client closed");
        // The socket closes once the delivery is synced and answered.
        let closed = wait_for(Duration::from_secs(10), || open_descriptors(server.pid()) == idle_descriptors);
        assert!(
            closed,
            "connection {index} still open: {} descriptors, {idle_descriptors} when idle",
            open_descriptors(server.pid())
        );
    }
    assert_healthy(&server);
}

/// Starts `serve` after `ulimit ULIMIT_ARGUMENTS` in sh, such as `-Sn 256`
/// for a soft limit of 256 open files, on a new database and port 0.
/// Returns the process, its address and the directory of the database.
fn spawn_with_open_files_limit(
    ulimit_arguments: &str,
    extra: &[&str],
) -> (std::process::Child, std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let db = dir.path().join("events.db");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {ulimit_arguments} && exec \"$0\" \"$@\""))
        .arg(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .args(extra)
        .env_remove("DSEVENTS_TOKEN")
        .env_remove("DSEVENTS_DB")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start dsevents serve under sh");
    let address = common::read_listening_address(&mut child);
    (child, address, dir)
}

/// With a soft limit of 256 open files, `--max-connections 300` could not
/// be reached. Many systems give shells a soft limit of 1024, below the
/// default of 1024 connections plus serve's own files. Accept failed with
/// EMFILE at about 240 connections, and every later client waited in the
/// listen backlog with no response, not even the documented 503. Now all
/// 300 are served, and connection 301 takes the slot of the idle one.
#[test]
fn open_files_limit_below_max_connections() {
    const CONNECTIONS: usize = 300;
    let (mut child, address, _dir) =
        spawn_with_open_files_limit("-Sn 256", &["--max-connections", "300"]);

    let mut open_connections = Vec::new();
    for _ in 0..CONNECTIONS {
        open_connections.push(TcpStream::connect(address).expect("connect to serve"));
    }
    let last = open_connections.last_mut().expect("at least one connection");
    last.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set read timeout");
    last.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("send request on the last connection");
    let last_reply = read_reply(last);

    // Connection 301 takes the slot of the connection idle longest, once
    // it has been idle for 1 s.
    thread::sleep(Duration::from_millis(1200));
    let mut extra = TcpStream::connect(address).expect("connect past the limit");
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set read timeout");
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("send request on connection 301");
    let extra_reply = read_reply(&mut extra);
    let mut first = open_connections.remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set read timeout");
    let mut byte = [0u8; 1];
    let first_read = first.read(&mut byte);

    drop(open_connections);
    drop(extra);
    let _ = child.kill();
    let _ = child.wait();

    let last_status = last_reply
        .expect("connection 300 of 300 got no response within 5 s")
        .status;
    assert_eq!(last_status, 200, "connection 300 got status {last_status}");
    let extra_status = extra_reply
        .expect("connection 301 got no response within 5 s")
        .status;
    assert_eq!(extra_status, 200);
    assert!(
        matches!(first_read, Ok(0)),
        "the first connection, idle longest, was closed: {first_read:?}"
    );
}

/// With a hard limit of 256 open files, serve cannot hold 300 connections.
/// It serves as many as fit with room for its own files, and responds to
/// the clients past them with 503 instead of leaving them unaccepted.
#[test]
fn open_files_hard_limit_gives_503() {
    const CONNECTIONS: usize = 300;
    let (mut child, address, _dir) =
        spawn_with_open_files_limit("-n 256", &["--max-connections", "300"]);

    // Each connection starts a request, so that none is idle and a new
    // connection cannot take its slot. Those past the limit get 503 and
    // are closed.
    let mut open_connections = Vec::new();
    for _ in 0..CONNECTIONS - 1 {
        let mut stream = TcpStream::connect(address).expect("connect to serve");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set read timeout");
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\n");
        open_connections.push(stream);
    }
    // Time for serve to read every started request.
    thread::sleep(Duration::from_millis(500));
    let mut last = TcpStream::connect(address).expect("connect to serve");
    last.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set read timeout");
    let last_reply = read_reply(&mut last);
    let mut first = open_connections.remove(0);
    first
        .write_all(b"Host: 127.0.0.1\r\n\r\n")
        .expect("finish the request on the first connection");
    let first_reply = read_reply(&mut first);

    drop(open_connections);
    let _ = child.kill();
    let _ = child.wait();

    let first_status = first_reply
        .expect("connection 1 got no response within 5 s")
        .status;
    assert_eq!(first_status, 200);
    let last_status = last_reply
        .expect("connection 300 got no response within 5 s")
        .status;
    assert_eq!(last_status, 503);
}

/// Clients that connect and send nothing held every slot for the idle
/// timeout, 30 s, without a token, and each delivery got 503 meanwhile.
/// A new connection now closes the one idle longest.
#[test]
fn silent_connections_yield_slots() {
    let server = Server::start(&["--max-connections", "3", "--token", "sekrit"]);
    let mut silent: Vec<TcpStream> = (0..3).map(|_| server.connect()).collect();
    // A connection may lose its slot after 1 s between requests.
    thread::sleep(Duration::from_millis(1200));

    for index in 0..3 {
        let reply = server.post(&format!("/hooks/email-bounced?token=sekrit&n={index}"), bounce(&format!("slot-{index}")).as_bytes());
        assert_eq!(reply.status, 200, "delivery {index}: {}", reply.body);
    }

    let mut closed = 0;
    for stream in &mut silent {
        stream.set_read_timeout(Some(Duration::from_secs(2))).expect("set read timeout");
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte), Ok(0)) {
            closed += 1;
        }
    }
    // The first delivery took a silent connection's slot. Later ones may
    // find the slot of a delivery before them free again.
    assert!(closed >= 1, "no silent connection was closed to make room");
    assert_healthy(&server);
}

/// A keep-alive connection keeps its slot while it is busy, and when its
/// next request has arrived but is not read yet: a new connection gets 503
/// instead. Closing it would have dropped that request with a reset.
#[test]
fn busy_keep_alive_keeps_slot() {
    let server = Server::start(&["--max-connections", "1"]);
    let mut keep_alive = server.connect();
    keep_alive.set_read_timeout(Some(Duration::from_secs(5))).expect("set read timeout");
    keep_alive.write_all(&delivery_request("first")).expect("send first delivery");
    assert_eq!(read_reply(&mut keep_alive).expect("first reply").status, 200);

    // Within 1 s of its last response: not idle long enough to lose its slot.
    let mut over_limit = server.connect();
    over_limit.set_read_timeout(Some(Duration::from_secs(5))).expect("set read timeout");
    assert_eq!(read_reply(&mut over_limit).expect("reply past the limit").status, 503);

    // Idle long enough, but its next request arrives just before a new
    // connection does.
    thread::sleep(Duration::from_millis(1200));
    keep_alive.write_all(&delivery_request("second")).expect("send second delivery");
    let mut newcomer = server.connect();
    newcomer.set_read_timeout(Some(Duration::from_secs(5))).expect("set read timeout");
    assert_eq!(read_reply(&mut keep_alive).expect("second reply on the keep-alive connection").status, 200);
    assert_eq!(read_reply(&mut newcomer).expect("reply past the limit").status, 503);
    assert_eq!(server.count("SELECT count(*) FROM deliveries"), 2);
}
