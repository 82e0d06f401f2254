//! `dsevents import`: backfills deliveries from NDJSON files or JSON arrays
//! through the same normalization and duplicate detection as `serve`.
//!
//! Each element (or line) becomes one delivery. An element that is already
//! in the database (same kind, same bytes) is skipped, so importing a file
//! twice adds nothing the second time. A line that is not JSON is reported
//! with its line number and kept as a quarantined delivery.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args};
use rusqlite::{params, Connection, TransactionBehavior};
use serde_json::value::RawValue;

use crate::catalog;
use crate::cli::{DbArg, UsageError};
use crate::normalize::parse_json;
use crate::progress;
use crate::store::{self, Delivery, Parsed};
use crate::time::{format_utc, now_text, parse_duration, parse_event_time};

/// Deliveries written per transaction.
const BATCH: usize = 500;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("kind_source").required(true).args(["kind", "kind_field"])))]
pub struct ImportArgs {
    #[command(flatten)]
    pub db: DbArg,

    /// NDJSON files (one body per line) or JSON files holding an array of
    /// bodies; `-` reads standard input.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    /// Kind slug of every body, such as email-bounced.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,

    /// Name of a member of each body that holds its kind slug.
    #[arg(long, value_name = "NAME")]
    pub kind_field: Option<String>,

    /// Name of a member of each body that holds when it was received (any
    /// date form DailyStory sends); without it, the import time is used.
    #[arg(long, value_name = "NAME")]
    pub received_at_field: Option<String>,

    /// A body identical to one received this long before it, for the same
    /// kind, is stored and marked as its duplicate (s, m, h, d; 0 disables).
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub duplicate_window: String,
}

/// Counts of one import.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub stored: u64,
    pub quarantined: u64,
    pub unknown_kind: u64,
    pub already_present: u64,
    pub invalid_lines: u64,
}

struct Settings {
    kind: Option<String>,
    kind_field: Option<String>,
    received_at_field: Option<String>,
    window_ms: i64,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    if let Some(kind) = &args.kind {
        if catalog::by_slug(kind).is_none() {
            return Err(UsageError(format!("unknown kind '{kind}'; the known kinds are {}", catalog::slug_list())).into());
        }
    }
    let window_ms = if args.duplicate_window.trim() == "0" {
        0
    } else {
        parse_duration(&args.duplicate_window)
            .map_err(|error| UsageError(format!("--duplicate-window: {error}")))?
            .num_milliseconds()
    };
    let settings = Settings {
        kind: args.kind.clone(),
        kind_field: args.kind_field.clone(),
        received_at_field: args.received_at_field.clone(),
        window_ms,
    };

    let mut connection = store::open_existing(&args.db.db)?;
    // Bodies already present before this run are skipped; copies within the
    // files themselves are kept and marked as duplicates, as serve does.
    let existing_max_id: i64 = connection.query_row("SELECT coalesce(max(id), 0) FROM deliveries", [], |row| row.get(0))?;
    let mut total = ImportSummary::default();
    for file in &args.files {
        let summary = import_file(&mut connection, file, &settings, existing_max_id)?;
        println!(
            "{}: {} stored, {} quarantined, {} unknown kind, {} already present, {} invalid lines kept",
            file.display(),
            summary.stored,
            summary.quarantined,
            summary.unknown_kind,
            summary.already_present,
            summary.invalid_lines
        );
        total.stored += summary.stored;
        total.quarantined += summary.quarantined;
        total.unknown_kind += summary.unknown_kind;
        total.already_present += summary.already_present;
        total.invalid_lines += summary.invalid_lines;
    }
    if args.files.len() > 1 {
        println!(
            "total: {} stored, {} quarantined, {} unknown kind, {} already present, {} invalid lines kept",
            total.stored, total.quarantined, total.unknown_kind, total.already_present, total.invalid_lines
        );
    }
    Ok(())
}

fn import_file(connection: &mut Connection, file: &PathBuf, settings: &Settings, existing_max_id: i64) -> anyhow::Result<ImportSummary> {
    let (reader, size): (Box<dyn Read>, u64) = if file.as_os_str() == "-" {
        (Box::new(std::io::stdin()), 0)
    } else {
        let opened = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let size = opened.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        (Box::new(opened), size)
    };
    let mut reader = BufReader::new(reader);
    let name = file.display().to_string();

    // A JSON array starts with '['; anything else is read as NDJSON.
    let starts_array = {
        let buffered = reader.fill_buf()?;
        let buffered = buffered.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(buffered);
        buffered.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[')
    };

    let bar = progress::bytes_bar(size, "import");
    let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH);
    let mut summary = ImportSummary::default();

    if starts_array {
        let mut text = String::new();
        reader.read_to_string(&mut text).with_context(|| format!("cannot read {name} as UTF-8 text"))?;
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
        match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(elements) => {
                for element in elements {
                    batch.push(element_delivery(element.get().as_bytes(), settings));
                    if batch.len() == BATCH {
                        write_batch(connection, &mut batch, settings.window_ms, existing_max_id, &mut summary)?;
                    }
                }
            }
            Err(error) => {
                eprintln!("{name}:{}: invalid JSON array ({error}); the whole file is kept as one quarantined delivery", error.line());
                summary.invalid_lines += 1;
                batch.push(invalid_delivery(text.as_bytes(), settings, format!("{name}:{}: {error}", error.line())));
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
            match parse_json(body) {
                Ok(_) => batch.push(element_delivery(body, settings)),
                Err(reason) => {
                    eprintln!("{name}:{line_number}: {reason}; kept as a quarantined delivery");
                    summary.invalid_lines += 1;
                    batch.push(invalid_delivery(body, settings, format!("{name}:{line_number}: {reason}")));
                }
            }
            if batch.len() == BATCH {
                write_batch(connection, &mut batch, settings.window_ms, existing_max_id, &mut summary)?;
            }
        }
    }
    write_batch(connection, &mut batch, settings.window_ms, existing_max_id, &mut summary)?;
    bar.finish_and_clear();
    Ok(summary)
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Builds the delivery of one element, finding its kind and time.
fn element_delivery(body: &[u8], settings: &Settings) -> Delivery {
    let json = parse_json(body).ok();
    let member = |name: &str| -> Option<String> {
        let wanted = catalog::canonical_key(name);
        json.as_ref()?
            .as_object()?
            .iter()
            .find(|(key, _)| catalog::canonical_key(key) == wanted)
            .and_then(|(_, value)| match value {
                serde_json::Value::String(text) => Some(text.clone()),
                serde_json::Value::Number(number) => Some(number.to_string()),
                _ => None,
            })
    };

    let kind = match (&settings.kind, &settings.kind_field) {
        (Some(kind), _) => kind.clone(),
        (None, Some(field)) => member(field).unwrap_or_else(|| "unknown".to_string()),
        (None, None) => "unknown".to_string(),
    };
    let received_at = settings
        .received_at_field
        .as_deref()
        .and_then(member)
        .and_then(|text| parse_event_time(&text).ok().flatten())
        .map_or_else(now_text, format_utc);
    Delivery::new(&kind, body.to_vec(), Some("application/json".to_string()), received_at)
}

fn invalid_delivery(body: &[u8], settings: &Settings, reason: String) -> Delivery {
    let kind = settings.kind.clone().unwrap_or_else(|| "unknown".to_string());
    let mut delivery = Delivery::new(&kind, body.to_vec(), None, now_text());
    delivery.parsed = Parsed::Quarantined(reason);
    delivery
}

/// Writes `batch` in one transaction, skipping bodies present before the run.
fn write_batch(
    connection: &mut Connection,
    batch: &mut Vec<Delivery>,
    window_ms: i64,
    existing_max_id: i64,
    summary: &mut ImportSummary,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for delivery in batch.drain(..) {
        let present: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM deliveries WHERE body_sha256 = ?1 AND kind = ?2 AND id <= ?3)")?
            .query_row(params![&delivery.sha256[..], delivery.kind, existing_max_id], |row| row.get(0))?;
        if present {
            summary.already_present += 1;
            continue;
        }
        store::insert_delivery(&tx, &delivery, window_ms)?;
        match delivery.parsed {
            Parsed::Stored(..) => summary.stored += 1,
            Parsed::Quarantined(_) => summary.quarantined += 1,
            Parsed::UnknownKind => summary.unknown_kind += 1,
        }
    }
    tx.commit()?;
    Ok(())
}
