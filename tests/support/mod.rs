//! Helpers shared by the integration tests: running the real `dsevents`
//! binary, and a small HTTP peer that records the requests it receives.

#![allow(dead_code)] // each test crate uses a different part of this module

pub mod peer;

use std::path::Path;
use std::process::{Command, Stdio};

/// The outcome of one run of a command, with everything a failing assert
/// should print.
pub struct Run {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "command: {}\nexit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the `dsevents` binary built for this test run with `args`, without
/// DSEVENTS_TOKEN from the test's own environment, plus the given variables.
pub fn dsevents(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dsevents"));
    command.args(args).env_remove("DSEVENTS_TOKEN").stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    run(command)
}

/// Runs `command` to completion and captures its output.
pub fn run(mut command: Command) -> Run {
    let description = format!("{command:?}");
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot start {description}: {error}"));
    Run {
        command: description,
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Returns the bytes of the sample fixture of `slug`.
pub fn fixture(slug: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/samples/{slug}.json"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Returns the slug in a request target such as `/hooks/lead-created?token=x`.
pub fn slug_of(target: &str) -> &str {
    let path = target.split('?').next().unwrap_or(target);
    path.strip_prefix("/hooks/").unwrap_or(path)
}
