//! The `urls` command: prints, for each event kind, DailyStory's name for
//! the event and the webhook URL to paste into DailyStory's settings.
//! Names that older DailyStory documentation used for an event are printed
//! too, so a search for a name from an old configuration finds its kind.
//!
//! DailyStory's webhook settings take only a URL, so the secret travels as
//! `?token=` in it. This module also builds those URLs for `simulate`.

use std::io::{self, IsTerminal, Write};

use clap::{Args, ValueEnum};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::catalog::{Kind, KINDS};
use crate::cli::UsageError;

/// Bytes a token keeps unencoded in a query value: the unreserved
/// characters of RFC 3986 (letters, digits, `-`, `.`, `_` and `~`).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Text printed in place of the token when none is given.
pub const TOKEN_PLACEHOLDER: &str = "<TOKEN>";

#[derive(Debug, Args)]
pub struct UrlsArgs {
    /// Public base URL at which DailyStory reaches `dsevents serve`, such as
    /// https://hooks.example.com.
    #[arg(long, value_name = "URL")]
    pub base: String,

    /// Shared secret of `dsevents serve`, added to each URL as ?token=
    /// [default: the DSEVENTS_TOKEN environment variable].
    // Read from the environment in `run`, not with clap's `env`, because
    // clap would then report a conflict for DSEVENTS_TOKEN plus --no-token.
    #[arg(long, value_name = "SECRET", conflicts_with = "no_token")]
    pub token: Option<String>,

    /// Print the URLs without a token, for a server that runs without a secret.
    #[arg(long)]
    pub no_token: bool,

    /// Output format [default: table on a terminal, csv otherwise].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<UrlsFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UrlsFormat {
    /// Aligned columns with a header; older event names follow the name
    /// as "(formerly ...)".
    Table,
    /// Comma-separated values with a header line: event, kind, url, and
    /// older_names separated by "; ".
    Csv,
    /// A JSON array of objects with event, older_names, kind and url members.
    Json,
}

/// The token part of the printed URLs.
enum TokenChoice<'a> {
    Secret(&'a str),
    Placeholder,
    Omitted,
}

/// One output line: a kind and its URL.
struct Entry {
    kind: &'static Kind,
    url: String,
}

/// Runs `dsevents urls`.
pub fn run(args: UrlsArgs) -> anyhow::Result<()> {
    let base = parse_base_url("--base", &args.base)?;

    let secret = match (args.no_token, args.token) {
        (true, _) => None,
        (false, Some(token)) => Some(token),
        (false, None) => token_from_env()?,
    };
    let token = match secret.as_deref().filter(|secret| !secret.is_empty()) {
        _ if args.no_token => TokenChoice::Omitted,
        Some(secret) => TokenChoice::Secret(secret),
        None => TokenChoice::Placeholder,
    };
    if matches!(token, TokenChoice::Placeholder) {
        eprintln!(
            "dsevents: note: no token given, so the URLs show {TOKEN_PLACEHOLDER} in place of the secret. \
             Pass --token SECRET, set DSEVENTS_TOKEN, or pass --no-token for a server without a secret"
        );
    }

    let entries: Vec<Entry> = KINDS
        .iter()
        .map(|kind| {
            let url = match token {
                TokenChoice::Secret(secret) => hook_url(&base, kind.slug, Some(secret)),
                TokenChoice::Placeholder => format!("{}?token={TOKEN_PLACEHOLDER}", hook_url(&base, kind.slug, None)),
                TokenChoice::Omitted => hook_url(&base, kind.slug, None),
            };
            Entry { kind, url }
        })
        .collect();

    let format = args.format.unwrap_or(if io::stdout().is_terminal() {
        UrlsFormat::Table
    } else {
        UrlsFormat::Csv
    });
    let text = match format {
        UrlsFormat::Table => render_table(&entries),
        UrlsFormat::Csv => render_csv(&entries),
        UrlsFormat::Json => render_json(&entries)?,
    };
    match io::stdout().lock().write_all(text.as_bytes()) {
        // A closed pipe (`dsevents urls | head -1`) is the reader's choice.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Returns the value of DSEVENTS_TOKEN, or `None` when it is not set.
fn token_from_env() -> Result<Option<String>, UsageError> {
    match std::env::var("DSEVENTS_TOKEN") {
        Ok(token) => Ok(Some(token)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(UsageError(
            "DSEVENTS_TOKEN is not valid UTF-8. Set it to a token of printable characters".to_string(),
        )),
    }
}

/// Checks a base URL option and returns it without trailing slashes.
///
/// The value must start with `http://` or `https://` (in any letter case),
/// name a host, and contain no query, fragment, space or control character,
/// because `/hooks/{slug}` and `?token=` are appended to it.
pub fn parse_base_url(option: &str, value: &str) -> Result<String, UsageError> {
    let invalid = |reason: &str| UsageError(format!("invalid {option} '{value}': {reason}"));

    let lowercase = value.to_ascii_lowercase();
    let Some(rest) = ["http://", "https://"]
        .iter()
        .find_map(|scheme| lowercase.starts_with(scheme).then(|| &value[scheme.len()..]))
    else {
        return Err(invalid(
            "it must start with http:// or https://, such as https://hooks.example.com",
        ));
    };
    if rest.split('/').next().unwrap_or_default().is_empty() {
        return Err(invalid("it must name a host, such as https://hooks.example.com"));
    }
    if value.contains(['?', '#']) {
        return Err(invalid(
            "it must not contain a query (?) or fragment (#), because /hooks/{kind} is appended to it",
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it must not contain spaces or control characters"));
    }

    Ok(value.trim_end_matches('/').to_string())
}

/// Builds `{base}/hooks/{slug}`, with `?token=` and the percent-encoded
/// token when one is given. `base` must have no trailing slash.
pub fn hook_url(base: &str, slug: &str, token: Option<&str>) -> String {
    let mut url = format!("{base}/hooks/{slug}");
    if let Some(token) = token {
        url.push_str("?token=");
        url.extend(utf8_percent_encode(token, QUERY_VALUE));
    }
    url
}

/// Returns the event name shown in the table: DailyStory's current name,
/// followed by the names older documentation used, if any.
fn event_label(kind: &Kind) -> String {
    if kind.older_names.is_empty() {
        kind.name.to_string()
    } else {
        format!("{} (formerly {})", kind.name, kind.older_names.join(", "))
    }
}

fn render_table(entries: &[Entry]) -> String {
    let headers = ["EVENT", "KIND", "URL"];
    let labels: Vec<String> = entries.iter().map(|entry| event_label(entry.kind)).collect();
    let event_width = labels
        .iter()
        .map(|label| label.chars().count())
        .chain([headers[0].len()])
        .max()
        .unwrap_or(0);
    let kind_width = entries
        .iter()
        .map(|entry| entry.kind.slug.chars().count())
        .chain([headers[1].len()])
        .max()
        .unwrap_or(0);

    let mut text = format!(
        "{:event_width$}  {:kind_width$}  {}\n",
        headers[0], headers[1], headers[2]
    );
    for (entry, label) in entries.iter().zip(&labels) {
        text.push_str(&format!(
            "{:event_width$}  {:kind_width$}  {}\n",
            label, entry.kind.slug, entry.url
        ));
    }
    text
}

/// Writes the columns event, kind, url and then older_names, so that the
/// first three keep their places for scripts written before it was added.
fn render_csv(entries: &[Entry]) -> String {
    let mut text = String::from("event,kind,url,older_names\n");
    for entry in entries {
        let older_names = entry.kind.older_names.join("; ");
        let fields = [entry.kind.name, entry.kind.slug, entry.url.as_str(), older_names.as_str()].map(csv_field);
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    text
}

/// Quotes a CSV field as RFC 4180 requires when it contains a comma, a
/// quote or a line break.
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

fn render_json(entries: &[Entry]) -> anyhow::Result<String> {
    let items: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            serde_json::json!({
                "event": entry.kind.name,
                "older_names": entry.kind.older_names,
                "kind": entry.kind.slug,
                "url": entry.url,
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&items)?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_percent_encoded() {
        let url = hook_url("https://hooks.example.com", "lead-created", Some("a b&c=d/é+~_.-"));
        assert_eq!(
            url,
            "https://hooks.example.com/hooks/lead-created?token=a%20b%26c%3Dd%2F%C3%A9%2B~_.-"
        );
    }

    #[test]
    fn base_loses_trailing_slashes() {
        assert_eq!(
            parse_base_url("--base", "https://example.com/dsevents//").unwrap(),
            "https://example.com/dsevents"
        );
        assert_eq!(
            parse_base_url("--base", "HTTP://127.0.0.1:8080").unwrap(),
            "HTTP://127.0.0.1:8080"
        );
    }

    #[test]
    fn invalid_bases_are_rejected() {
        for value in [
            "ftp://example.com",
            "example.com",
            "https://",
            "https:///hooks",
            "https://example.com/?a=b",
            "https://example.com/#x",
            "https://exa mple.com",
        ] {
            let error = parse_base_url("--base", value).unwrap_err();
            assert!(error.0.contains(&format!("'{value}'")), "{error}");
        }
    }

    #[test]
    fn csv_field_quotes_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
