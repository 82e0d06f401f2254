//! `dsevents urls`, run as a user would: the real binary, its stdout,
//! stderr and exit code.

mod support;

use support::dsevents;

/// Every kind's event name, slug and older names ("; " separated, as the
/// CSV prints them), in catalogue order.
const EVENTS: [(&str, &str, &str); 18] = [
    ("Contact Created or Updated", "contact-updated", "New Contact"),
    ("Contact Create or Update Failed", "contact-update-failed", ""),
    ("Lead Created", "lead-created", "New Lead"),
    ("Lead Status Changed", "lead-status-changed", ""),
    ("Contact Status Changed", "contact-status-changed", ""),
    ("URL Shortener Clicked", "link-clicked", "Tracking Link Clicked"),
    ("Text Message Reply Received", "text-reply", ""),
    ("Email Address Bounced", "email-bounced", ""),
    ("Opted out of Email", "email-opt-out", ""),
    ("Opted out of Text Messaging", "sms-opt-out", ""),
    ("Opted out of Phone Calls", "phone-opt-out", ""),
    ("Opted in to Email", "email-opt-in", ""),
    ("Opted in to Text Messaging", "sms-opt-in", ""),
    ("Opted in to Phone Calls", "phone-opt-in", ""),
    ("Web Form Submitted", "webform-submitted", ""),
    ("Segment Created", "segment-created", ""),
    ("Segment Updated", "segment-updated", ""),
    ("User Created", "user-created", ""),
];

/// Returns the CSV lines that `urls` prints when each URL is
/// `{prefix}{slug}{suffix}`.
fn expected_csv(prefix: &str, suffix: &str) -> String {
    let mut text = String::from("event,kind,url,older_names\n");
    for (event, slug, older_names) in EVENTS {
        text.push_str(&format!("{event},{slug},{prefix}{slug}{suffix},{older_names}\n"));
    }
    text
}

#[test]
fn csv_lists_every_kind_exactly() {
    let run = dsevents(
        &["urls", "--base", "https://hooks.example.com/", "--token", "s3cret"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        expected_csv("https://hooks.example.com/hooks/", "?token=s3cret"),
        "{run}"
    );
    assert_eq!(run.stderr, "", "{run}");
}

#[test]
fn csv_lines_match_literals() {
    let run = dsevents(
        &[
            "urls",
            "--base",
            "http://127.0.0.1:8080",
            "--token",
            "abc",
            "--format",
            "csv",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 19, "{run}");
    assert_eq!(
        lines[1],
        "Contact Created or Updated,contact-updated,http://127.0.0.1:8080/hooks/contact-updated?token=abc,New Contact"
    );
    assert_eq!(
        lines[8],
        "Email Address Bounced,email-bounced,http://127.0.0.1:8080/hooks/email-bounced?token=abc,"
    );
    assert_eq!(
        lines[18],
        "User Created,user-created,http://127.0.0.1:8080/hooks/user-created?token=abc,"
    );
}

#[test]
fn token_special_characters_are_percent_encoded() {
    let token = "p@ss w/rd&x=1?#%+é~_.-";
    let run = dsevents(
        &[
            "urls",
            "--base",
            "https://hooks.example.com",
            "--token",
            token,
            "--format",
            "csv",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");
    let encoded = "p%40ss%20w%2Frd%26x%3D1%3F%23%25%2B%C3%A9~_.-";
    assert_eq!(
        run.stdout,
        expected_csv("https://hooks.example.com/hooks/", &format!("?token={encoded}")),
        "{run}"
    );
}

#[test]
fn token_comes_from_environment() {
    let run = dsevents(
        &["urls", "--base", "https://hooks.example.com"],
        &[("DSEVENTS_TOKEN", "from env")],
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        expected_csv("https://hooks.example.com/hooks/", "?token=from%20env"),
        "{run}"
    );
}

#[test]
fn token_option_overrides_environment() {
    let run = dsevents(
        &["urls", "--base", "https://hooks.example.com", "--token", "option"],
        &[("DSEVENTS_TOKEN", "environment")],
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        expected_csv("https://hooks.example.com/hooks/", "?token=option"),
        "{run}"
    );
}

#[test]
fn no_token_omits_query() {
    let run = dsevents(
        &["urls", "--base", "https://hooks.example.com", "--no-token"],
        &[("DSEVENTS_TOKEN", "ignored")],
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        expected_csv("https://hooks.example.com/hooks/", ""),
        "{run}"
    );
    assert_eq!(run.stderr, "", "{run}");
}

#[test]
fn missing_token_prints_placeholder() {
    let run = dsevents(&["urls", "--base", "https://hooks.example.com"], &[]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        expected_csv("https://hooks.example.com/hooks/", "?token=<TOKEN>"),
        "{run}"
    );
    assert!(run.stderr.contains("<TOKEN>"), "{run}");
    assert!(run.stderr.contains("--token"), "{run}");
    assert!(run.stderr.contains("--no-token"), "{run}");
}

#[test]
fn base_path_is_kept() {
    let run = dsevents(
        &["urls", "--base", "https://example.com/dsevents/", "--token", "t"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        expected_csv("https://example.com/dsevents/hooks/", "?token=t"),
        "{run}"
    );
}

#[test]
fn invalid_base_exits_2() {
    for base in [
        "ftp://hooks.example.com",
        "hooks.example.com",
        "https://",
        "https://hooks.example.com/?x=1",
    ] {
        let run = dsevents(&["urls", "--base", base, "--token", "t"], &[]);
        assert_eq!(run.code, Some(2), "{run}");
        assert_eq!(run.stdout, "", "{run}");
        assert!(run.stderr.starts_with("dsevents: "), "{run}");
        assert!(run.stderr.contains(&format!("'{base}'")), "{run}");
    }
}

#[test]
fn token_and_no_token_conflict() {
    let run = dsevents(
        &[
            "urls",
            "--base",
            "https://hooks.example.com",
            "--token",
            "t",
            "--no-token",
        ],
        &[],
    );
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(run.stdout, "", "{run}");
}

#[test]
fn json_format_has_every_kind() {
    let run = dsevents(
        &[
            "urls",
            "--base",
            "https://hooks.example.com",
            "--token",
            "t",
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");
    let items: Vec<serde_json::Value> =
        serde_json::from_str(&run.stdout).unwrap_or_else(|error| panic!("{error}\n{run}"));
    assert_eq!(items.len(), EVENTS.len(), "{run}");
    for (item, (event, slug, older_names)) in items.iter().zip(EVENTS) {
        assert_eq!(item["event"], event, "{run}");
        let expected_older: Vec<&str> = older_names.split("; ").filter(|name| !name.is_empty()).collect();
        assert_eq!(item["older_names"], serde_json::json!(expected_older), "{run}");
        assert_eq!(item["kind"], slug, "{run}");
        assert_eq!(
            item["url"],
            format!("https://hooks.example.com/hooks/{slug}?token=t"),
            "{run}"
        );
    }
}

#[test]
fn table_format_aligns_columns() {
    let run = dsevents(
        &[
            "urls",
            "--base",
            "https://hooks.example.com",
            "--token",
            "t",
            "--format",
            "table",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 19, "{run}");
    assert!(lines[0].starts_with("EVENT "), "{run}");
    let url_column = lines[0].find("URL").expect("URL header");
    for (line, (event, slug, _)) in lines[1..].iter().zip(EVENTS) {
        assert!(line.starts_with(event), "{run}");
        assert_eq!(
            &line[url_column..],
            format!("https://hooks.example.com/hooks/{slug}?token=t"),
            "{run}"
        );
    }
}

#[test]
fn table_shows_older_event_names() {
    let run = dsevents(
        &["urls", "--base", "https://hooks.example.com", "--token", "t", "--format", "table"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");
    let clicked = run.stdout.lines().find(|line| line.contains("link-clicked")).expect("link-clicked line");
    assert!(
        clicked.starts_with("URL Shortener Clicked (formerly Tracking Link Clicked)  "),
        "{run}"
    );
    let failed = run.stdout.lines().find(|line| line.contains("contact-update-failed")).expect("failed line");
    assert!(!failed.contains("formerly"), "no older name, no note: {run}");
}
