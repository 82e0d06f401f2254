//! `dsevents import`: backfills deliveries from NDJSON files or JSON arrays
//! through the same normalization and duplicate detection as `serve`.
//!
//! Each element (or line) becomes one delivery. Its `source` column records
//! where it came from, with FILE as given on the command line:
//! `import FILE:LINE` for NDJSON, `import FILE:#INDEX` (counting from 0)
//! for an array element, and `import FILE` for a whole file that is not a
//! valid array. An element is skipped when a delivery with the
//! same source, kind and body exists, so importing a file again under the
//! same path adds nothing. Identical bodies from other places (another
//! line, another file, or serve) are kept, and marked as duplicates within
//! the window as serve marks them.
//!
//! A line that is not JSON, or a body without the `--kind-field` member, is
//! reported with its place and kept as a quarantined delivery.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{ArgGroup, Args};
use indicatif::ProgressBar;
use rusqlite::{params, Connection, TransactionBehavior};
use serde_json::value::RawValue;

use crate::catalog;
use crate::cli::{parse_positive_duration, DbArg, UsageError};
use crate::normalize::parse_json;
use crate::output::print_line;
use crate::progress;
use crate::store::{self, Delivery, Parsed, RecentBodies};
use crate::time::{format_utc, now_text, parse_event_time};

/// Deliveries written per transaction.
const BATCH: usize = 500;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("kind_source").required(true).args(["kind", "kind_field"])))]
pub struct ImportArgs {
    #[command(flatten)]
    pub db: DbArg,

    /// NDJSON files (one body per line) or JSON files holding an array of
    /// bodies; `-` reads standard input. An element already imported from
    /// the same path and line (or array index) is skipped, so importing a
    /// file a second time adds nothing.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    /// Kind slug of every body, such as email-bounced.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,

    /// Name of a member of each body that contains its kind slug. A body
    /// without it is kept quarantined under the kind `unknown`.
    #[arg(long, value_name = "NAME")]
    pub kind_field: Option<String>,

    /// Name of a member of each body that holds when it was received (any
    /// date form DailyStory sends). Without this option, or when a body's
    /// member is missing or unreadable, the import time is used.
    #[arg(long, value_name = "NAME")]
    pub received_at_field: Option<String>,

    /// A body identical to one received this long before it, for the same
    /// kind, is stored and marked as its duplicate (s, m, h, d or w; 0 disables).
    #[arg(long, default_value = "24h", value_name = "DURATION", allow_hyphen_values = true)]
    pub duplicate_window: String,
}

/// Counts of one import. Problems are counted only for deliveries this
/// run wrote, so importing a file again counts them as already present.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub stored: u64,
    pub quarantined: u64,
    pub unknown_kind: u64,
    pub already_present: u64,
    pub invalid_lines: u64,
    /// Bodies without a usable `--kind-field` member, kept quarantined.
    pub without_kind: u64,
    /// Bodies whose `--received-at-field` member was missing or unreadable.
    pub import_time_used: u64,
}

impl ImportSummary {
    fn add(&mut self, other: &ImportSummary) {
        self.stored += other.stored;
        self.quarantined += other.quarantined;
        self.unknown_kind += other.unknown_kind;
        self.already_present += other.already_present;
        self.invalid_lines += other.invalid_lines;
        self.without_kind += other.without_kind;
        self.import_time_used += other.import_time_used;
    }

    /// Formats the counts, naming the members the options gave.
    fn describe(&self, settings: &Settings) -> String {
        let mut text = format!(
            "{} stored, {} quarantined, {} unknown kind, {} already present, {} invalid lines kept",
            self.stored, self.quarantined, self.unknown_kind, self.already_present, self.invalid_lines
        );
        if let Some(field) = &settings.kind_field {
            text.push_str(&format!(", {} without a kind in member {field}", self.without_kind));
        }
        if let Some(field) = &settings.received_at_field {
            text.push_str(&format!(
                ", {} received at the import time (member {field} missing or unreadable)",
                self.import_time_used
            ));
        }
        text
    }
}

struct Settings {
    kind: Option<String>,
    kind_field: Option<String>,
    received_at_field: Option<String>,
    window_ms: i64,
}

/// A problem with one element, reported on stderr and counted only when
/// the element is written.
enum Problem {
    InvalidJson,
    NoKind,
    NoTime,
}

/// One element read from a file, waiting to be written.
struct Pending {
    delivery: Delivery,
    problems: Vec<(Problem, String)>,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    if let Some(kind) = &args.kind {
        if catalog::by_slug(kind).is_none() {
            return Err(UsageError(format!("unknown kind '{kind}'; the known kinds are {}", catalog::slug_list())).into());
        }
    }
    let window_ms = parse_window(&args.duplicate_window)?;
    let settings = Settings {
        kind: args.kind.clone(),
        kind_field: args.kind_field.clone(),
        received_at_field: args.received_at_field.clone(),
        window_ms,
    };

    let mut connection = store::open_existing(&args.db.db)?;
    let mut total = ImportSummary::default();
    let mut recent = RecentBodies::new(settings.window_ms);
    // A summary that cannot be written does not stop the import: the
    // first failure is reported, and the remaining files are imported.
    let mut output_failure = None;
    let mut report = |line: std::fmt::Arguments| {
        if output_failure.is_none() {
            if let Err(error) = print_line(line) {
                eprintln!("dsevents: warning: {error:#}; importing the remaining files without their summaries");
                output_failure = Some(error);
            }
        }
    };
    for file in &args.files {
        let summary = import_file(&mut connection, file, &settings, &mut recent)?;
        report(format_args!("{}: {}", file.display(), summary.describe(&settings)));
        total.add(&summary);
    }
    if args.files.len() > 1 {
        report(format_args!("total: {}", total.describe(&settings)));
    }
    match output_failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Reads `--duplicate-window`: 0 disables duplicate marking.
fn parse_window(text: &str) -> Result<i64, UsageError> {
    if text.trim() == "0" {
        return Ok(0);
    }
    let window = parse_positive_duration("--duplicate-window", text)?;
    Ok(window.num_milliseconds())
}

fn import_file(
    connection: &mut Connection,
    file: &Path,
    settings: &Settings,
    recent: &mut RecentBodies,
) -> anyhow::Result<ImportSummary> {
    let name = file.display().to_string();
    let (reader, size): (Box<dyn Read>, u64) = if file.as_os_str() == "-" {
        (Box::new(std::io::stdin()), 0)
    } else {
        let opened = std::fs::File::open(file).with_context(|| format!("cannot open {name}"))?;
        let metadata = opened.metadata().with_context(|| format!("cannot read {name}"))?;
        if metadata.is_dir() {
            bail!("cannot import {name}: it is a directory; give the NDJSON or JSON files in it");
        }
        (Box::new(opened), metadata.len())
    };
    let mut reader = BufReader::new(reader);

    // A JSON array starts with '['; anything else is read as NDJSON.
    let starts_array = {
        let buffered = reader.fill_buf().with_context(|| format!("cannot read {name}"))?;
        let buffered = buffered.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(buffered);
        buffered.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[')
    };

    let bar = progress::bytes_bar(size, "import");
    let mut batch: Vec<Pending> = Vec::with_capacity(BATCH);
    let mut summary = ImportSummary::default();

    if starts_array {
        let mut text = String::new();
        reader.read_to_string(&mut text).with_context(|| format!("cannot read {name} as UTF-8 text"))?;
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
        match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(elements) => {
                for (index, element) in elements.into_iter().enumerate() {
                    batch.push(element_delivery(element.get().as_bytes(), &format!("{name}:#{index}"), settings));
                    if batch.len() == BATCH {
                        write_batch(connection, &mut batch, recent, &mut summary, &bar)?;
                    }
                }
            }
            Err(error) => {
                let reason = format!("{name}:{}: invalid JSON array ({error})", error.line());
                let mut pending = invalid_delivery(text.as_bytes(), &name, settings, reason.clone());
                pending.problems.push((
                    Problem::InvalidJson,
                    format!("{reason}; the whole file is kept as one quarantined delivery"),
                ));
                batch.push(pending);
            }
        }
        bar.inc(size);
    } else {
        let mut line_number = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).with_context(|| format!("cannot read {name}"))?;
            if read == 0 {
                break;
            }
            line_number += 1;
            bar.inc(read as u64);
            let body = trim_line(&line);
            if body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let location = format!("{name}:{line_number}");
            let pending = match parse_json(body) {
                Ok(_) => element_delivery(body, &location, settings),
                Err(reason) => {
                    let mut pending = invalid_delivery(body, &location, settings, format!("{location}: {reason}"));
                    pending
                        .problems
                        .push((Problem::InvalidJson, format!("{location}: {reason}; kept as a quarantined delivery")));
                    pending
                }
            };
            batch.push(pending);
            if batch.len() == BATCH {
                write_batch(connection, &mut batch, recent, &mut summary, &bar)?;
            }
        }
    }
    write_batch(connection, &mut batch, recent, &mut summary, &bar)?;
    bar.finish_and_clear();
    Ok(summary)
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Builds the delivery of the element at `location` (`FILE:LINE` or
/// `FILE:#INDEX`), finding its kind and time.
fn element_delivery(body: &[u8], location: &str, settings: &Settings) -> Pending {
    let json = parse_json(body).ok();
    // Members are matched as the parsers match field names: without regard
    // to case, `_` or `-`.
    let member = |name: &str| -> Option<&serde_json::Value> {
        let wanted = catalog::canonical_key(name);
        json.as_ref()?
            .as_object()?
            .iter()
            .find(|(key, _)| catalog::canonical_key(key) == wanted)
            .map(|(_, value)| value)
    };
    let mut problems = Vec::new();

    let mut missing_kind = None;
    let kind = match (&settings.kind, &settings.kind_field) {
        (Some(kind), _) => kind.clone(),
        (None, Some(field)) => match member(field).and_then(scalar_text) {
            Some(kind) => kind,
            None => {
                let reason = match member(field) {
                    None => format!("{location}: no member {field}"),
                    Some(value) => format!("{location}: member {field} is {}, not a kind slug", shorten(&value.to_string())),
                };
                problems.push((Problem::NoKind, format!("{reason}; kept as a quarantined delivery")));
                missing_kind = Some(reason);
                "unknown".to_string()
            }
        },
        (None, None) => "unknown".to_string(),
    };

    let mut received_at = None;
    if let Some(field) = &settings.received_at_field {
        let problem = match member(field) {
            None => Some(format!("{location}: no member {field}; using the import time")),
            Some(value) => {
                let text = scalar_text(value).unwrap_or_else(|| value.to_string());
                match scalar_text(value).map(|text| parse_event_time(&text)) {
                    Some(Ok(Some(time))) => {
                        received_at = Some(format_utc(time));
                        None
                    }
                    Some(Ok(None)) => Some(format!(
                        "{location}: '{}' in member {field} is DailyStory's \"no date\"; using the import time",
                        shorten(&text)
                    )),
                    Some(Err(_)) | None => Some(format!(
                        "{location}: cannot read '{}' in member {field} as a time; using the import time",
                        shorten(&text)
                    )),
                }
            }
        };
        if let Some(message) = problem {
            problems.push((Problem::NoTime, message));
        }
    }

    let received_at = received_at.unwrap_or_else(now_text);
    let mut delivery = Delivery::new(&kind, body.to_vec(), Some("application/json".to_string()), received_at);
    if let Some(reason) = missing_kind {
        delivery.parsed = Parsed::Quarantined(reason);
    }
    delivery.source = Some(format!("import {location}"));
    Pending { delivery, problems }
}

/// Returns a string member's text, or a number's digits.
fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Cuts a value quoted in a message to at most 60 characters.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    if text.chars().count() <= MAX_CHARS {
        return text.to_string();
    }
    let head: String = text.chars().take(MAX_CHARS).collect();
    format!("{head}...")
}

/// Builds the quarantined delivery of a line (or file) that is not JSON.
fn invalid_delivery(body: &[u8], location: &str, settings: &Settings, reason: String) -> Pending {
    let kind = settings.kind.clone().unwrap_or_else(|| "unknown".to_string());
    let mut delivery = Delivery::new(&kind, body.to_vec(), None, now_text());
    delivery.parsed = Parsed::Quarantined(reason);
    delivery.source = Some(format!("import {location}"));
    Pending { delivery, problems: Vec::new() }
}

/// Writes `batch` in one transaction. An element is skipped when an earlier
/// import already wrote the same body, of the same kind, from the same
/// place (`source`). A body that serve received, or that another line
/// repeats, is written, and marked as a duplicate as serve would mark it.
fn write_batch(
    connection: &mut Connection,
    batch: &mut Vec<Pending>,
    recent: &mut RecentBodies,
    summary: &mut ImportSummary,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut messages = Vec::new();
    for Pending { delivery, problems } in batch.drain(..) {
        let present: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE source = ?1 AND body_sha256 = ?2 AND kind = ?3)",
            )?
            .query_row(params![delivery.source, &delivery.sha256[..], delivery.kind], |row| row.get(0))?;
        if present {
            summary.already_present += 1;
            continue;
        }
        store::insert_delivery(&tx, &delivery, recent)?;
        match delivery.parsed {
            Parsed::Stored(..) => summary.stored += 1,
            Parsed::Quarantined(_) => summary.quarantined += 1,
            Parsed::UnknownKind => summary.unknown_kind += 1,
        }
        for (problem, message) in problems {
            match problem {
                Problem::InvalidJson => summary.invalid_lines += 1,
                Problem::NoKind => summary.without_kind += 1,
                Problem::NoTime => summary.import_time_used += 1,
            }
            messages.push(message);
        }
    }
    if let Err(cause) = tx.commit() {
        recent.roll_back();
        return Err(cause.into());
    }
    recent.commit();
    // Reported after the commit, so a message is never printed for a
    // delivery that a failed transaction did not keep.
    bar.suspend(|| messages.iter().for_each(|message| eprintln!("{message}")));
    Ok(())
}
