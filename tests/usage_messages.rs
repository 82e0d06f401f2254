//! Help text and usage errors of the report and data commands, through the
//! real binary: each error names the option and its value.

mod common;

use common::{describe, run};

/// Runs the binary, asserts it exits 2, and returns its stderr.
fn usage_error(args: &[&str]) -> String {
    let output = run(args);
    assert_eq!(output.status.code(), Some(2), "{}", describe(args, &output));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `args` and returns its stdout, asserting success.
fn help(args: &[&str]) -> String {
    let output = run(args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(args, &output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn lead_that_is_not_a_number() {
    let stderr = usage_error(&["query", "lead-status", "--lead", "abc"]);
    assert!(stderr.contains("'abc'"), "{stderr}");
    assert!(stderr.contains("--lead"), "{stderr}");
    assert!(stderr.contains("not a lead id"), "{stderr}");
    assert!(stderr.contains("1042"), "an example of a lead id: {stderr}");
    assert!(!stderr.contains("invalid digit"), "{stderr}");
}

#[test]
fn negative_limit_names_value() {
    for command in [&["query", "bounces"][..], &["query", "events"], &["query", "lead-status"]] {
        let mut args = command.to_vec();
        args.extend(["--limit", "-1"]);
        let stderr = usage_error(&args);
        assert!(stderr.contains("'-1'"), "{stderr}");
        assert!(stderr.contains("1 or more"), "{stderr}");
        assert!(!stderr.contains("unexpected argument"), "{stderr}");
    }
}

#[test]
fn negative_since_names_value() {
    let stderr = usage_error(&["query", "bounces", "--since", "-7d"]);
    assert!(stderr.contains("'-7d'"), "{stderr}");
    assert!(!stderr.contains("unexpected argument"), "{stderr}");
}

#[test]
fn export_help_defaults_to_csv() {
    let text = help(&["export", "--help"]);
    assert!(text.contains("[default: csv]"), "{text}");
    assert!(!text.contains("table"), "export writes no table: {text}");
    let stderr = usage_error(&["export", "--kind", "email-bounced", "--format", "table"]);
    assert!(stderr.contains("csv, json, ndjson"), "{stderr}");
}

#[test]
fn log_format_help_is_short() {
    for command in [&["status"][..], &["export"], &["query", "bounces"], &["import"]] {
        let mut args = command.to_vec();
        args.push("--help");
        let text = help(&args);
        assert!(text.contains("Log line format: text or json"), "{text}");
        assert!(!text.contains("RUST_LOG"), "{text}");
    }
    let serve = help(&["serve", "--help"]);
    assert!(serve.contains("RUST_LOG"), "serve explains its logs: {serve}");
}

#[test]
fn option_errors_state_valid_values() {
    for (args, expected) in [
        (&["serve", "--read-timeout", "99999"][..], "whole number of seconds from 1 to 3600"),
        (&["serve", "--idle-timeout", "0"], "whole number of seconds from 1 to 3600"),
        (&["simulate", "--timeout", "0"], "whole number of 1 or more"),
        (&["simulate", "--count", "0"], "whole number of 1 or more"),
        (&["serve", "--listen", "localhost:8080"], "give IP:PORT such as 127.0.0.1:8080"),
    ] {
        let stderr = usage_error(args);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains(&format!("'{}'", args[2])), "the value is named: {stderr}");
        assert!(!stderr.contains(".."), "no Rust range syntax: {stderr}");
    }
}
