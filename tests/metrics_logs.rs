//! `GET /metrics` numbers against what was posted, and the logs `serve`
//! writes, through the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, BIN};

/// Returns the value of the metric line that starts with `series `.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {series} in:\n{text}"))
        .parse()
        .expect("numeric metric")
}

#[test]
fn metrics_count_deliveries_by_kind_and_outcome() {
    let server = Server::start(&["--token", "t0k"]);
    for index in 0..3 {
        let reply = server.post("/hooks/email-bounced?token=t0k", format!(r#"{{"dsid":"d{index}"}}"#).as_bytes());
        assert_eq!(reply.status, 200);
    }
    assert_eq!(server.post("/hooks/lead-created?token=t0k", br#"{"id":"x"}"#).status, 202);
    assert_eq!(server.post("/hooks/brand-new?token=t0k", b"{}").status, 202);
    assert_eq!(server.post("/hooks/email-bounced?token=wrong", b"{}").status, 401);

    let reply = server.request("GET", "/metrics", &[], b"");
    assert_eq!(reply.status, 200);
    assert!(reply.header("Content-Type").unwrap().starts_with("text/plain"));
    let text = reply.body;
    assert_eq!(metric(&text, r#"dsevents_deliveries_total{kind="email-bounced",outcome="stored"}"#), 3.0);
    assert_eq!(metric(&text, r#"dsevents_deliveries_total{kind="lead-created",outcome="quarantined"}"#), 1.0);
    assert_eq!(metric(&text, r#"dsevents_deliveries_total{kind="unknown",outcome="unknown_kind"}"#), 1.0);
    assert_eq!(metric(&text, r#"dsevents_deliveries_total{kind="user-created",outcome="stored"}"#), 0.0);
    assert_eq!(metric(&text, r#"dsevents_http_requests_total{status="200"}"#), 3.0);
    assert_eq!(metric(&text, r#"dsevents_http_requests_total{status="202"}"#), 2.0);
    assert_eq!(metric(&text, r#"dsevents_http_requests_total{status="401"}"#), 1.0);
    assert_eq!(metric(&text, "dsevents_http_request_duration_seconds_count"), 6.0);
    // Every stored delivery went through one committed batch.
    assert_eq!(metric(&text, "dsevents_writer_batch_size_sum"), 5.0);
    let last = metric(&text, r#"dsevents_last_delivery_timestamp_seconds{kind="email-bounced"}"#);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - last).abs() < 60.0, "last delivery {last} is near now {now}");
    assert!(metric(&text, r#"dsevents_database_bytes{file="db"}"#) > 0.0);
    assert!(!text.contains("t0k"));
}

#[test]
fn restart_keeps_last_delivery_time() {
    let server = Server::start(&[]);
    server.post("/hooks/sms-opt-out", br#"{"dsid":"d1","mobile":"+1-555-0100"}"#);
    server.db().execute("UPDATE deliveries SET received_at = '2026-01-01T00:00:00.000Z'", []).unwrap();
    let mut server = server;
    server.restart(&[]);
    let text = server.request("GET", "/metrics", &[], b"").body;
    assert_eq!(metric(&text, r#"dsevents_last_delivery_timestamp_seconds{kind="sms-opt-out"}"#), 1_767_225_600.0);
}

#[test]
fn json_logs_show_requests_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("logs.db");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--token", "hunter2-secret", "--log-format", "json", "--db"])
        .arg(&db)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.trim().rsplit("http://").next().unwrap().to_string();

    let post = |target: &str| {
        let body = br#"{"dsid":"d1","email":"a@example.com"}"#;
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        std::io::Write::write_all(&mut stream, body).unwrap();
        common::read_reply(&mut stream).unwrap().status
    };
    assert_eq!(post("/hooks/email-opt-out?token=hunter2-secret"), 200);
    assert_eq!(post("/hooks/email-opt-out?token=hunter2-wrong"), 401);

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!stderr.contains("hunter2"), "the token never reaches the log:\n{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}")))
        .collect();
    let messages: Vec<&str> = lines.iter().filter_map(|line| line["message"].as_str()).collect();
    assert!(messages.iter().any(|m| m.starts_with("serve started") && m.contains("auth=token")), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.contains("path=/hooks/email-opt-out status=200 kind=email-opt-out")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.contains("status=401")), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("serve stopped")), "{messages:?}");
    assert!(lines.iter().all(|line| line["level"].is_string() && line["time"].is_string()));
}

#[test]
fn rejections_logged_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rejections.db");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--token", "hunter2-secret", "--max-body", "1KiB", "--db"])
        .arg(&db)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let address = common::read_listening_address(&mut child);

    let post = |target: &str, body: &[u8]| {
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        // The server may respond 413 and close before reading the body.
        let _ = std::io::Write::write_all(&mut stream, body);
        common::read_reply(&mut stream).unwrap().status
    };
    let small = br#"{"dsid":"d1","email":"a@example.com"}"#;
    for _ in 0..3 {
        assert_eq!(post("/hooks/email-opt-out?token=hunter2-wrong", small), 401);
    }
    assert_eq!(post("/hooks/email-opt-out?token=hunter2-secret", &[b' '; 4096]), 413);
    // A token put in the path by mistake is not logged either.
    assert_eq!(post("/hooks/email-opt-out%3Ftoken=hunter2-secret", small), 404);
    assert_eq!(post("/hooks/email-opt-out?token=hunter2-secret", small), 200);

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!stderr.contains("hunter2"), "the token never reaches the log:\n{stderr}");
    let unauthorized: Vec<&str> = stderr.lines().filter(|line| line.contains("status=401")).collect();
    assert_eq!(unauthorized.len(), 1, "three 401s within the interval give one line:\n{stderr}");
    assert!(unauthorized[0].contains("WARN"), "{stderr}");
    assert!(unauthorized[0].contains("(Unauthorized) method=POST path=/hooks/email-opt-out peer=127.0.0.1:"), "{stderr}");
    let too_large: Vec<&str> = stderr.lines().filter(|line| line.contains("status=413")).collect();
    assert_eq!(too_large.len(), 1, "{stderr}");
    assert!(!stderr.contains("status=200"), "accepted deliveries are not logged at the default level:\n{stderr}");
}
