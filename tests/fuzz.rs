//! Property tests: `normalize` never panics on any body for any kind, and
//! the real server responds to any bytes with 2xx or 4xx, never 5xx, and
//! never hangs.
//!
//! The server may close a connection without a response only when the
//! bytes end before a request does. That is the case when they hold no
//! complete head (one ended by CRLF CRLF) and no line ending in LF alone,
//! or when a complete head announces a body the bytes may not finish. The
//! test half-closes each connection after its bytes, so such a request
//! ends at once instead of waiting for the read timeout.

mod common;

use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::{read_reply, Server};
use dsevents::catalog::KINDS;
use dsevents::normalize::normalize;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const TOKEN: &str = "fuzz-secret-41c2";

/// A private-use character that `json_text` turns into a lone surrogate
/// escape, which serde_json's own output can never contain.
const LONE_SURROGATE_MARK: char = '\u{E000}';

/// Body keys that the catalogue reads, in several spellings, plus others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("dsid".to_string()),
        Just("dsId".to_string()),
        Just("DSID".to_string()),
        Just("id".to_string()),
        Just("email".to_string()),
        Just("mobile".to_string()),
        Just("date".to_string()),
        Just("status".to_string()),
        Just("is_spam_complaint".to_string()),
        Just("is_call_list".to_string()),
        Just("lead_id".to_string()),
        Just("webform_id".to_string()),
        Just("useruid".to_string()),
        Just("dateBirth".to_string()),
        Just("timestampCreated".to_string()),
        Just("extendedProperties".to_string()),
        Just("gender".to_string()),
        Just("accountId".to_string()),
        Just("exception".to_string()),
        Just("originalObject".to_string()),
        Just("Message".to_string()),
        ".{0,12}",
    ]
}

/// Strings that DailyStory's values take, and strings that break parsers.
fn string_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2026-03-01T14:05:09.517".to_string()),
        Just("2026-03-01T14:05:09+02:00".to_string()),
        Just("1753-01-01T00:00:00".to_string()),
        Just("/Date(1767225600000)/".to_string()),
        Just("/Date(-99999999999999999999)/".to_string()),
        Just("/Date(".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("true".to_string()),
        Just("False".to_string()),
        Just("1042".to_string()),
        Just(format!("half {LONE_SURROGATE_MARK} emoji")),
        ".{0,24}",
    ]
}

/// JSON values, nested up to 4 levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from(i64::MIN)),
        Just(Value::from(i64::MAX)),
        string_value().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..10)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Serializes `value`, with every `LONE_SURROGATE_MARK` turned into the
/// escape of a lone high surrogate.
fn json_text(value: &serde_json::Value) -> Vec<u8> {
    value.to_string().replace(LONE_SURROGATE_MARK, "\\ud83d").into_bytes()
}

/// Bodies: arbitrary bytes, JSON-ish text, and JSON with bytes cut or
/// flipped.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        json_value().prop_map(|value| json_text(&value)),
        (json_value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(value, index, byte)| {
            let mut bytes = json_text(&value);
            if !bytes.is_empty() {
                let at = index.index(bytes.len());
                bytes[at] = byte;
                bytes.truncate(at + 1 + index.index(bytes.len() - at));
            }
            bytes
        }),
    ]
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    #[test]
    fn normalize_never_panics(body in body()) {
        for kind in KINDS {
            if let Ok(row) = normalize(kind, &body) {
                // A row has one value per column of the kind's table.
                prop_assert_eq!(row.values.len(), kind.columns().len(), "kind {}", kind.slug);
            }
        }
    }
}

/// Header lines a request may carry, valid and not.
fn header_line() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("Content-Type: application/json".to_string()),
        1 => Just("Transfer-Encoding: chunked".to_string()),
        1 => Just("Transfer-Encoding: gzip".to_string()),
        1 => Just("Expect: 100-continue".to_string()),
        1 => Just("Expect: 200-ok".to_string()),
        1 => Just("Connection: close".to_string()),
        1 => Just("Connection: keep-alive".to_string()),
        1 => Just(format!("Authorization: Bearer {TOKEN}")),
        1 => Just("Authorization: Bearer wrong".to_string()),
        1 => (0u64..5000).prop_map(|length| format!("Content-Length: {length}")),
        1 => Just("Content-Length: 18446744073709551616".to_string()),
        1 => Just("Content-Length: 1, 2".to_string()),
        1 => Just("Content-Length: -3".to_string()),
        4 => "[A-Za-z-]{1,12}: [ -~]{0,24}",
        1 => "[^\r\n]{0,30}",
    ]
}

/// Requests built from parts that are mostly valid, with framing that may
/// or may not match the body.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        8 => Just("POST"),
        1 => Just("GET"),
        1 => Just("HEAD"),
        1 => Just("PUT"),
        1 => Just("P0ST"),
        1 => Just(""),
    ];
    let path = prop_oneof![
        Just(format!("/hooks/email-bounced?token={TOKEN}")),
        Just(format!("/hooks/lead-created?token={TOKEN}")),
        Just(format!("/hooks/no-such-kind?token={TOKEN}")),
        Just("/hooks/email-opt-out".to_string()),
        Just("/healthz".to_string()),
        Just(format!("http://127.0.0.1/hooks/text-reply?token={TOKEN}")),
        Just("*".to_string()),
        "/[ -~]{0,30}",
    ];
    let version = prop_oneof![
        8 => Just("HTTP/1.1"),
        2 => Just("HTTP/1.0"),
        1 => Just("HTTP/2.0"),
        1 => Just("HTTP/1.1 extra"),
    ];
    let line_end = prop_oneof![9 => Just("\r\n"), 1 => Just("\n")];
    let chunked = any::<bool>();
    (method, path, version, prop::collection::vec(header_line(), 0..6), body(), line_end, chunked).prop_map(
        |(method, path, version, headers, body, line_end, chunked)| {
            let mut text = format!("{method} {path} {version}{line_end}Host: 127.0.0.1{line_end}");
            for header in &headers {
                text.push_str(header);
                text.push_str(line_end);
            }
            if !headers.iter().any(|header| header.starts_with("Content-Length") || header.starts_with("Transfer")) {
                if chunked {
                    text.push_str(&format!("Transfer-Encoding: chunked{line_end}"));
                } else {
                    text.push_str(&format!("Content-Length: {}{line_end}", body.len()));
                }
            }
            text.push_str(line_end);
            let mut bytes = text.into_bytes();
            if chunked {
                bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                bytes.extend_from_slice(&body);
                bytes.extend_from_slice(b"\r\n0\r\n\r\n");
            } else {
                bytes.extend_from_slice(&body);
            }
            bytes
        },
    )
}

/// Any bytes at all, requests, and requests with bytes cut or flipped.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..1024),
        2 => request(),
        2 => (request(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut bytes, index, byte)| {
            let at = index.index(bytes.len());
            bytes[at] = byte;
            bytes
        }),
        1 => (request(), any::<prop::sample::Index>()).prop_map(|(mut bytes, index)| {
            bytes.truncate(index.index(bytes.len() + 1));
            bytes
        }),
    ]
}

/// Returns true if the server may close without responding to `bytes`,
/// by the rule in the module documentation. A line ending in LF alone gets
/// 400 as soon as it arrives.
fn may_close_silently(bytes: &[u8]) -> bool {
    let start = bytes.iter().take_while(|byte| **byte == b'\r' || **byte == b'\n').count();
    let bytes = &bytes[start..];
    let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") else {
        let bare_line_feed = (0..bytes.len()).any(|index| bytes[index] == b'\n' && (index == 0 || bytes[index - 1] != b'\r'));
        return !bare_line_feed;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    head.split("\r\n").skip(1).any(|line| {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.trim() {
            "transfer-encoding" => true,
            "content-length" => value.trim() != "0",
            _ => false,
        }
    })
}

#[test]
fn server_handles_any_bytes_without_5xx() {
    const CASES: u32 = 500;
    let server = Server::start(&["--token", TOKEN, "--read-timeout", "2", "--idle-timeout", "2"]);
    let started = Instant::now();
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());

    let config = Config { cases: CASES, failure_persistence: None, max_shrink_time: 10_000, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&request_bytes(), |bytes| {
        let mut stream = server.connect();
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set timeout");
        // The server may close early, for example after a 431; then the
        // rest of the bytes cannot be written, which is fine.
        let _ = stream.write_all(&bytes).and_then(|()| stream.shutdown(Shutdown::Write));
        match read_reply(&mut stream) {
            Ok(reply) => {
                *statuses.borrow_mut().entry(reply.status.to_string()).or_default() += 1;
                let allowed = matches!(reply.status, 200 | 202 | 400..=499);
                prop_assert!(allowed, "status {} for {:?}: {}", reply.status, String::from_utf8_lossy(&bytes), reply.body);
            }
            Err(error) if matches!(error.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => {
                *statuses.borrow_mut().entry("closed".to_string()).or_default() += 1;
                prop_assert!(
                    may_close_silently(&bytes),
                    "closed without a response ({error}) for a complete request: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            Err(error) => {
                return Err(TestCaseError::fail(format!(
                    "no response within 5 s ({error}) for {:?}",
                    String::from_utf8_lossy(&bytes)
                )))
            }
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    eprintln!("{CASES} cases in {:?}, responses: {:?}", started.elapsed(), statuses.borrow());

    // The server is still up and still stores real deliveries.
    let reply = server.request("GET", "/healthz", &[], b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = br#"{"dsid":"after-fuzz","email":"pat@example.com","messageid":"after-fuzz"}"#;
    let reply = server.post(&format!("/hooks/email-bounced?token={TOKEN}"), body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(server.count("SELECT count(*) FROM email_bounces WHERE message_id = 'after-fuzz'"), 1);
    assert_eq!(server.count("SELECT count(*) FROM deliveries WHERE outcome NOT IN ('stored', 'quarantined', 'unknown_kind')"), 0);
}
