//! The `simulate` command: posts the embedded sample deliveries to a
//! running `dsevents serve` as DailyStory would, and prints each response.
//!
//! Each request is a POST of one sample body to `{url}/hooks/{slug}`, with
//! `Content-Type: application/json` and the token as `?token=`.
//! NOTE: DailyStory documents a POST with a JSON body but not its exact
//! headers, so the Content-Type value here is an assumption.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Args;

use crate::catalog::{self, KINDS};
use crate::cli::UsageError;
use crate::samples::sample;
use crate::urls::{hook_url, parse_base_url};

/// Bytes of a response body read for printing. The rest is discarded.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// Characters of a response body printed on its line.
const MAX_PRINTED_CHARS: usize = 200;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Base URL of a running `dsevents serve`, such as http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub url: String,

    /// Kind to send, by its slug, such as lead-created; repeat the option or
    /// separate slugs with commas [default: every kind].
    #[arg(long = "kind", value_name = "SLUG", value_delimiter = ',')]
    pub kinds: Vec<String>,

    /// Number of times to send the sample of each kind.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_positive::<u32>)]
    pub count: u32,

    /// Shared secret of the server, sent as ?token=.
    #[arg(long, env = "DSEVENTS_TOKEN", hide_env_values = true, value_name = "SECRET")]
    pub token: Option<String>,

    /// Seconds to wait for each response, connecting included.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = parse_positive::<u64>)]
    pub timeout: u64,
}

/// The server's response to one delivery.
struct ServerResponse {
    status: u16,
    body: String,
    elapsed: Duration,
}

/// Runs `dsevents simulate`. Returns an error when any response status is
/// not 2xx, or when a request cannot be sent at all, which stops the run.
/// Reads a whole number of 1 or more, such as a count or seconds.
fn parse_positive<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(number) if number >= T::from(1) => Ok(number),
        _ => Err(format!("'{text}' is not a whole number of 1 or more")),
    }
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let base = parse_base_url("--url", &args.url)?;
    let slugs = selected_slugs(&args.kinds)?;
    let token = args.token.as_deref().filter(|token| !token.is_empty());
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(args.timeout))
        // Report a redirect instead of following it, because DailyStory's
        // handling of redirects is undocumented.
        .redirects(0)
        .user_agent(&format!("dsevents-simulate/{}", env!("CARGO_PKG_VERSION")))
        .build();

    let mut stdout = io::stdout().lock();
    let mut sent = 0usize;
    let mut not_2xx = 0usize;
    for slug in &slugs {
        let body = sample(slug).ok_or_else(|| anyhow!("no embedded sample for kind {slug}"))?;
        let url = hook_url(&base, slug, token);
        for _ in 0..args.count {
            let response = post(&agent, &url, body).map_err(|error| {
                // The URL in the message leaves out the token.
                anyhow!(
                    "failed to send {slug} to {}: {error}. Check that `dsevents serve` is running at {base}",
                    hook_url(&base, slug, None)
                )
            })?;
            sent += 1;
            if !(200..300).contains(&response.status) {
                not_2xx += 1;
            }
            let line = format!(
                "{slug:<22} {} {:>8.1} ms  {}\n",
                response.status,
                response.elapsed.as_secs_f64() * 1000.0,
                response.body
            );
            match stdout.write_all(line.as_bytes()) {
                // A closed pipe (`dsevents simulate | head`) is the reader's choice.
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
    }

    if not_2xx > 0 {
        bail!("{not_2xx} of {sent} deliveries got a response status other than 2xx");
    }
    let noun = if sent == 1 { "delivery" } else { "deliveries" };
    eprintln!("dsevents: sent {sent} {noun}, every response status was 2xx");
    Ok(())
}

/// Returns the slugs to send: the `--kind` values in the order given, or
/// every kind. An unknown slug is a usage error that lists the valid ones.
fn selected_slugs(kinds: &[String]) -> Result<Vec<&'static str>, UsageError> {
    if kinds.is_empty() {
        return Ok(KINDS.iter().map(|kind| kind.slug).collect());
    }
    kinds
        .iter()
        .map(|requested| {
            catalog::by_slug(requested.trim()).map(|kind| kind.slug).ok_or_else(|| {
                UsageError(format!(
                    "unknown --kind '{requested}'; valid kinds are: {}",
                    catalog::slug_list()
                ))
            })
        })
        .collect()
}

/// Posts one body and reads the response. Returns an error only when no
/// HTTP response arrived (connection refused, timeout, invalid response).
fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<ServerResponse, String> {
    use ureq::OrAnyStatus;

    let started = Instant::now();
    let response = agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_bytes(body)
        .or_any_status()
        .map_err(|error| describe_transport_error(&error))?;
    let status = response.status();

    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("reading the response body failed: {error}"))?;
    let elapsed = started.elapsed();

    Ok(ServerResponse {
        status,
        body: one_line(&String::from_utf8_lossy(&bytes)),
        elapsed,
    })
}

/// Describes a transport error without its URL, which carries the token.
fn describe_transport_error(error: &ureq::Transport) -> String {
    let mut text = error.kind().to_string();
    if let Some(message) = error.message() {
        text.push_str(": ");
        text.push_str(message);
    }
    if let Some(source) = std::error::Error::source(error) {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    text
}

/// Joins the lines of a response body with spaces and shortens it to
/// `MAX_PRINTED_CHARS`, marking a cut with an ellipsis.
fn one_line(body: &str) -> String {
    let joined = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        return "(empty body)".to_string();
    }
    if joined.chars().count() <= MAX_PRINTED_CHARS {
        return joined;
    }
    let mut shortened: String = joined.chars().take(MAX_PRINTED_CHARS).collect();
    shortened.push('…');
    shortened
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_and_shortens() {
        assert_eq!(
            one_line("{\"id\":1,\n  \"kind\":\"x\"}\r\n"),
            "{\"id\":1, \"kind\":\"x\"}"
        );
        assert_eq!(one_line("  \n"), "(empty body)");
        let long = "a".repeat(MAX_PRINTED_CHARS + 5);
        assert_eq!(one_line(&long).chars().count(), MAX_PRINTED_CHARS + 1);
        assert!(one_line(&long).ends_with('…'));
    }

    #[test]
    fn selected_slugs_default_to_every_kind() {
        assert_eq!(selected_slugs(&[]).unwrap().len(), KINDS.len());
    }

    #[test]
    fn unknown_kind_lists_valid_slugs() {
        let error = selected_slugs(&["lead-created".to_string(), "email-opened".to_string()]).unwrap_err();
        assert!(error.0.contains("'email-opened'"), "{error}");
        assert!(error.0.contains("lead-created, lead-status-changed"), "{error}");
    }
}
