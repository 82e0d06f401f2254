//! `dsevents status`, `completions` and `man` through the real binary.

mod common;

use std::process::{Command, Stdio};

use common::{describe, run, Server};

#[test]
fn status_counts_match_posts() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    for index in 0..3 {
        server.post("/hooks/email-bounced", format!(r#"{{"dsid":"d{index}","email":"x{index}@example.com"}}"#).as_bytes());
    }
    server.post("/hooks/email-bounced", br#"{"dsid":"d0","email":"x0@example.com"}"#);
    server.post("/hooks/lead-created", br#"{"id":"not a number"}"#);
    server.post("/hooks/not-a-kind", b"{}");

    let args = ["status", "--db", &db, "--format", "json"];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&args, &output));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON status");
    let kind = |slug: &str| status["kinds"].as_array().unwrap().iter().find(|kind| kind["kind"] == slug).cloned().unwrap();
    assert_eq!(kind("email-bounced")["count"], 4);
    assert_eq!(kind("email-bounced")["name"], "Email Address Bounced");
    assert_eq!(kind("lead-created")["count"], 1);
    assert_eq!(kind("user-created")["count"], 0);
    assert_eq!(kind("not-a-kind")["count"], 1);
    assert_eq!(status["deliveries"], 6);
    assert_eq!(status["duplicates"], 1);
    assert_eq!(status["quarantined"]["count"], 1);
    assert!(status["quarantined"]["latest_reason"].as_str().unwrap().contains("'not a number'"));
    assert_eq!(status["unknown_kind"]["count"], 1);
    assert_eq!(status["schema_version"], 2);
    assert!(status["database_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn silent_kind_warns_and_check_fails() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    server.post("/hooks/email-opt-out", br#"{"dsid":"d1","email":"a@example.com"}"#);
    server.post("/hooks/sms-opt-out", br#"{"dsid":"d1","mobile":"+1-555-0100"}"#);

    let args = ["status", "--db", &db, "--check"];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0), "fresh deliveries give no warning: {}", describe(&args, &output));

    server
        .db()
        .execute("UPDATE deliveries SET received_at = '2026-01-01T00:00:00.000Z' WHERE kind = 'sms-opt-out'", [])
        .unwrap();
    let output = run(&args);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&args, &output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("warning: no sms-opt-out deliveries since 2026-01-01T00:00:00.000Z"), "{stdout}");
    assert!(stdout.contains("10 failed deliveries"), "{stdout}");
    assert!(!stdout.contains("no email-opt-out"), "{stdout}");

    let relaxed = ["status", "--db", &db, "--check", "--silence", "9999d"];
    assert_eq!(run(&relaxed).status.code(), Some(0));
    let bad = ["status", "--db", &db, "--silence", "soon"];
    let output = run(&bad);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&bad, &output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("'soon'"));
}

#[test]
fn completions_and_man_page_cover_commands() {
    let output = run(&["completions", "bash"]);
    assert_eq!(output.status.code(), Some(0));
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(script.contains("serve"), "bash completion lists serve");
    assert!(script.contains("--max-body"), "bash completion lists serve options");

    let output = run(&["man"]);
    assert_eq!(output.status.code(), Some(0));
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.contains(".TH dsevents 1"), "roff man page");
    assert!(page.contains("serve"));
}

#[test]
fn status_text_has_no_trailing_spaces() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    server.post("/hooks/email-opt-out", br#"{"dsid":"d1","email":"a@example.com"}"#);
    let args = ["status", "--db", &db];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&args, &output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("email-opt-out"), "{stdout}");
    for line in stdout.lines() {
        assert_eq!(line, line.trim_end(), "trailing spaces in {line:?}");
    }
}

#[test]
fn status_silence_must_be_positive() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_string();
    for value in ["0", "-1h", "0s"] {
        let args = ["status", "--db", &db, "--silence", value];
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{}", describe(&args, &output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("--silence '{value}'")), "{stderr}");
        assert!(stderr.contains("must be positive"), "{stderr}");
    }
}

#[test]
fn man_to_closed_pipe_ends_quietly() {
    let mut child = Command::new(common::BIN)
        .arg("man")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dsevents man");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait for dsevents man");
    assert_eq!(output.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

#[test]
fn completions_to_closed_pipe_end_quietly() {
    for shell in ["bash", "zsh", "fish"] {
        let mut child = Command::new(common::BIN)
            .args(["completions", shell])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dsevents completions");
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait for dsevents completions");
        assert_eq!(output.status.code(), Some(0), "{shell}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{shell}");
    }
}

#[test]
fn man_dir_writes_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let pages_text = pages.to_str().unwrap();
    let args = ["man", "--dir", pages_text];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&args, &output));

    let mut names: Vec<String> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for expected in [
        "dsevents.1",
        "dsevents-serve.1",
        "dsevents-query.1",
        "dsevents-query-bounces.1",
        "dsevents-query-lead-status.1",
        "dsevents-import.1",
        "dsevents-man.1",
    ] {
        assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
    }
    assert!(!names.iter().any(|name| name.contains("help")), "no page for clap's help subcommand: {names:?}");
    // 13 subcommands, 5 of them under query, and the top-level page.
    assert_eq!(names.len(), 19, "{names:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 19, "{}", describe(&args, &output));

    let bounces = std::fs::read_to_string(pages.join("dsevents-query-bounces.1")).unwrap();
    assert!(bounces.contains(".TH dsevents-query-bounces 1"), "{bounces}");
    assert!(bounces.contains("spam\\-only"), "the page documents the subcommand's options: {bounces}");
    let top = std::fs::read_to_string(pages.join("dsevents.1")).unwrap();
    let printed = run(&["man"]);
    assert_eq!(String::from_utf8_lossy(&printed.stdout), top, "man without --dir prints the top-level page");
}

/// A database of schema version 1 that this user may read but not write
/// (here the file is bind-mounted read-only in a private mount namespace)
/// is read as it is, with a warning, rather than failing on the upgrade.
#[test]
fn read_only_old_database_still_read() {
    let mut server = Server::start(&[]);
    server.post("/hooks/email-bounced", br#"{"dsid":"d1","email":"x1@example.com"}"#);
    server.signal("TERM");
    assert_eq!(server.wait_exit(std::time::Duration::from_secs(10)).and_then(|status| status.code()), Some(0));
    rusqlite::Connection::open(&server.db)
        .unwrap()
        .execute_batch("PRAGMA user_version = 1")
        .unwrap();

    let db = server.db.to_str().unwrap();
    let script = format!(
        "mount --bind {db} {db} && mount -o remount,bind,ro {db} && exec {} status --db {db} --format json",
        common::BIN
    );
    let output = match Command::new("unshare").args(["-rm", "sh", "-c", &script]).output() {
        Ok(output) if !String::from_utf8_lossy(&output.stderr).contains("mount:") => output,
        other => {
            eprintln!("SKIPPED read_only_old_database_still_read: no read-only bind mount in a namespace: {other:?}");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON status");
    assert_eq!(status["deliveries"], 1);
    assert_eq!(status["schema_version"], 1);
    assert!(stderr.contains("cannot be upgraded to 2 here"), "{stderr}");
}
