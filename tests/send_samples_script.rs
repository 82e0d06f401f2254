//! `scripts/send-samples`, run with bash and curl against a real HTTP peer
//! on 127.0.0.1.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::peer::Peer;
use support::{fixture, slug_of, Run};

fn send_samples(url: &str, token: Option<&str>) -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/send-samples");
    let mut command = Command::new("bash");
    command
        .arg(script)
        .arg(url)
        .env_remove("DSEVENTS_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("DSEVENTS_TOKEN", token);
    }
    support::run(command)
}

#[test]
fn script_posts_every_sample() {
    let peer = Peer::start(|_| (200, "{}".to_string()));
    let run = send_samples(&format!("{}/", peer.url()), Some("a b/é"));
    assert_eq!(run.code, Some(0), "{run}");

    // In the order `dsevents simulate` sends them, which the README's
    // example reports depend on.
    let requests = peer.received();
    let slugs: Vec<&str> = requests.iter().map(|request| slug_of(&request.target)).collect();
    let expected: Vec<&str> = dsevents::catalog::KINDS.iter().map(|kind| kind.slug).collect();
    assert_eq!(slugs, expected, "{run}");

    for request in &requests {
        let slug = slug_of(&request.target);
        assert_eq!(request.method, "POST", "{slug}");
        assert_eq!(request.target, format!("/hooks/{slug}?token=a%20b%2F%C3%A9"));
        assert_eq!(request.header("content-type"), Some("application/json"), "{slug}");
        assert_eq!(request.body, fixture(slug), "body of {slug}");
    }
    assert_eq!(run.stdout.lines().count(), expected.len(), "{run}");
    assert!(run.stdout.lines().all(|line| line.ends_with(" 200")), "{run}");
}

#[test]
fn script_without_token_sends_no_query() {
    let peer = Peer::start(|_| (202, "{}".to_string()));
    let run = send_samples(&peer.url(), None);
    assert_eq!(run.code, Some(0), "{run}");
    for request in peer.received() {
        assert!(!request.target.contains('?'), "{}", request.target);
    }
}

#[test]
fn script_exits_1_on_non_2xx() {
    let peer = Peer::start(|request| {
        let status = if slug_of(&request.target) == "email-bounced" {
            503
        } else {
            200
        };
        (status, "{}".to_string())
    });
    let run = send_samples(&peer.url(), None);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stdout.lines().any(|line| line == "email-bounced          503"),
        "{run}"
    );
    assert!(run.stderr.contains("1 of 18 deliveries"), "{run}");
}

#[test]
fn script_rejects_invalid_url() {
    let run = send_samples("127.0.0.1:8080", None);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("'127.0.0.1:8080'"), "{run}");
}
