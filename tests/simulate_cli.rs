//! `dsevents simulate` against a real HTTP peer on 127.0.0.1: the request
//! it sends, what it prints and its exit code.

mod support;

use std::net::TcpListener;

use support::peer::Peer;
use support::{dsevents, fixture, slug_of};

fn peer_responding_200() -> Peer {
    Peer::start(|request| (200, format!(r#"{{"id":1,"kind":"{}"}}"#, slug_of(&request.target))))
}

#[test]
fn request_matches_dailystory_delivery() {
    let peer = peer_responding_200();
    let run = dsevents(
        &[
            "simulate",
            "--url",
            &peer.url(),
            "--kind",
            "lead-created",
            "--token",
            "a b&c",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");

    let requests = peer.received();
    assert_eq!(requests.len(), 1, "{run}");
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/hooks/lead-created?token=a%20b%26c");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.body, fixture("lead-created"));
}

#[test]
fn output_line_has_kind_status_time_body() {
    let peer = peer_responding_200();
    let run = dsevents(&["simulate", "--url", &peer.url(), "--kind", "email-bounced"], &[]);
    assert_eq!(run.code, Some(0), "{run}");

    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{run}");
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(fields[0], "email-bounced", "{run}");
    assert_eq!(fields[1], "200", "{run}");
    assert!(fields[2].parse::<f64>().is_ok(), "{run}");
    assert_eq!(fields[3], "ms", "{run}");
    assert_eq!(fields[4], r#"{"id":1,"kind":"email-bounced"}"#, "{run}");
    assert!(
        run.stderr.contains("sent 1 delivery, every response status was 2xx"),
        "{run}"
    );
}

#[test]
fn every_kind_sent_by_default() {
    let peer = peer_responding_200();
    let run = dsevents(&["simulate", "--url", &format!("{}/", peer.url())], &[]);
    assert_eq!(run.code, Some(0), "{run}");

    let requests = peer.received();
    let slugs: Vec<&str> = requests.iter().map(|request| slug_of(&request.target)).collect();
    let expected: Vec<&str> = dsevents::catalog::KINDS.iter().map(|kind| kind.slug).collect();
    assert_eq!(slugs, expected, "{run}");
    for request in &requests {
        let slug = slug_of(&request.target);
        assert_eq!(request.target, format!("/hooks/{slug}"), "no token, so no query");
        assert_eq!(request.body, fixture(slug), "body of {slug}");
    }
    assert_eq!(run.stdout.lines().count(), expected.len(), "{run}");
}

#[test]
fn count_repeats_each_kind() {
    let peer = peer_responding_200();
    let run = dsevents(
        &[
            "simulate",
            "--url",
            &peer.url(),
            "--kind",
            "email-bounced,text-reply",
            "--count",
            "3",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");

    let requests = peer.received();
    let slugs: Vec<&str> = requests.iter().map(|request| slug_of(&request.target)).collect();
    assert_eq!(
        slugs,
        [
            "email-bounced",
            "email-bounced",
            "email-bounced",
            "text-reply",
            "text-reply",
            "text-reply"
        ]
    );
}

#[test]
fn token_comes_from_environment() {
    let peer = peer_responding_200();
    let run = dsevents(
        &["simulate", "--url", &peer.url(), "--kind", "phone-opt-in"],
        &[("DSEVENTS_TOKEN", "env/token")],
    );
    assert_eq!(run.code, Some(0), "{run}");

    let requests = peer.received();
    assert_eq!(requests.len(), 1, "{run}");
    assert_eq!(requests[0].target, "/hooks/phone-opt-in?token=env%2Ftoken");
}

#[test]
fn non_2xx_response_exits_1() {
    let peer = Peer::start(|request| {
        if slug_of(&request.target) == "text-reply" {
            (500, "store failed:\ndisk full".to_string())
        } else {
            (200, "{}".to_string())
        }
    });
    let run = dsevents(
        &[
            "simulate",
            "--url",
            &peer.url(),
            "--kind",
            "lead-created",
            "--kind",
            "text-reply",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run}");

    assert_eq!(peer.received().len(), 2, "both kinds are sent before the exit");
    let failed_line = run
        .stdout
        .lines()
        .find(|line| line.starts_with("text-reply"))
        .expect("a line for text-reply");
    assert!(failed_line.contains(" 500 "), "{run}");
    assert!(failed_line.ends_with("store failed: disk full"), "{run}");
    assert!(run.stderr.contains("1 of 2 deliveries"), "{run}");
}

#[test]
fn redirect_counts_as_failure() {
    let peer = Peer::start(|_| (302, String::new()));
    let run = dsevents(&["simulate", "--url", &peer.url(), "--kind", "user-created"], &[]);
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(peer.received().len(), 1, "the redirect is not followed");
    assert!(run.stdout.contains(" 302 "), "{run}");
}

#[test]
fn unknown_kind_exits_2_and_sends_nothing() {
    let peer = peer_responding_200();
    let run = dsevents(
        &[
            "simulate",
            "--url",
            &peer.url(),
            "--kind",
            "lead-created",
            "--kind",
            "email-opened",
        ],
        &[],
    );
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("'email-opened'"), "{run}");
    assert!(run.stderr.contains(&dsevents::catalog::slug_list()), "{run}");
    assert!(peer.received().is_empty(), "{run}");
}

#[test]
fn invalid_url_exits_2() {
    let run = dsevents(&["simulate", "--url", "127.0.0.1:8080"], &[]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("'127.0.0.1:8080'"), "{run}");
}

#[test]
fn unreachable_server_exits_1_without_leaking_token() {
    // Bind and release a port so that nothing listens on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("address")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = dsevents(
        &[
            "simulate",
            "--url",
            &url,
            "--kind",
            "sms-opt-out",
            "--token",
            "topsecret",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains(&format!("{url}/hooks/sms-opt-out")), "{run}");
    assert!(!run.stderr.contains("topsecret"), "{run}");
    assert!(!run.stdout.contains("topsecret"), "{run}");
}
