//! The `query` subcommands: reports read from the tables and views of
//! `schema.sql`, written by `output` in the format `--format` chooses.
//!
//! Each report is a fixed SELECT plus a fixed condition per option given.
//! Option values are only ever bound as named parameters (`:dsid`), never
//! spliced into the SQL text.

use std::io::{self, BufWriter, StdoutLock, Write};
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql};

use crate::catalog;
use crate::consent;
use crate::cli::{DbArg, UsageError};
use crate::output::{self, Format, RowWriter};
use crate::store;
use crate::time;

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// List opt-outs of email, text messages and phone calls, most recently
    /// received first.
    ///
    /// Retries of an identical delivery count once.
    OptOuts(OptOutsArgs),
    /// List bounced email addresses and spam complaints, most recently
    /// received first.
    ///
    /// Retries of an identical delivery count once.
    Bounces(BouncesArgs),
    /// List lead status changes with the status before each, oldest first per lead.
    ///
    /// previous_status is the status of the lead's change received before,
    /// also when --since leaves that change out. It is empty for a lead's
    /// first change.
    LeadStatus(LeadStatusArgs),
    /// Show every delivery about one contact, oldest first.
    ///
    /// summary is a short description built from the delivery's row, such
    /// as the reason of a bounce or the new status of a lead. Retries of an
    /// identical delivery are left out.
    Contact(ContactArgs),
    /// List raw deliveries, newest first, including those that were
    /// quarantined or named an unknown kind.
    Events(EventsArgs),
}

/// Options every query takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub db: DbArg,

    #[command(flatten)]
    pub time: TimeArgs,

    /// Output format [default: table when standard output is a terminal,
    /// csv otherwise].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,
}

/// `--since` and `--until`, shared by the queries and `export`.
#[derive(Debug, Args)]
pub struct TimeArgs {
    /// Only rows received at or after TIME: a date (2026-03-01, midnight
    /// UTC), a timestamp (2026-03-01T14:05:00Z) or a duration back from now
    /// (7d, 24h, 30m).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,

    /// Only rows received before TIME, in the same forms as --since.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
}

#[derive(Debug, Args)]
pub struct OptOutsArgs {
    /// Only opt-outs of this channel.
    #[arg(long, value_enum)]
    pub channel: Option<Channel>,

    /// Only contacts still opted out: an opt-in received after an opt-out
    /// on the same channel cancels it. Shows changed_at, the time of the
    /// contact's latest change, in place of received_at, and --since and
    /// --until filter on it.
    #[arg(long)]
    pub current: bool,

    /// Only the contact with this DailyStory contact id.
    #[arg(long, value_name = "DSID")]
    pub dsid: Option<String>,

    /// Print at most N rows [default: all].
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub limit: Option<i64>,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct BouncesArgs {
    /// Only bounces that are spam complaints.
    #[arg(long)]
    pub spam_only: bool,

    /// Only addresses at this domain, such as example.com (case-insensitive;
    /// a leading @ is accepted). Subdomains do not match.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,

    /// Only the contact with this DailyStory contact id.
    #[arg(long, value_name = "DSID")]
    pub dsid: Option<String>,

    /// Print at most N rows [default: all].
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub limit: Option<i64>,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct LeadStatusArgs {
    /// Only the lead with this numeric id, such as 1042.
    #[arg(long, value_name = "ID", value_parser = parse_lead, allow_negative_numbers = true)]
    pub lead: Option<i64>,

    /// Only leads of the contact with this DailyStory contact id.
    #[arg(long, value_name = "DSID")]
    pub dsid: Option<String>,

    /// Print at most N rows [default: all].
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub limit: Option<i64>,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ContactArgs {
    /// The DailyStory contact id (dsid).
    pub dsid: String,

    /// Print at most N rows [default: all].
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub limit: Option<i64>,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only deliveries to this kind slug, such as email-bounced. A slug
    /// dsevents does not know matches deliveries kept as unknown_kind.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,

    /// Only deliveries with this outcome.
    #[arg(long, value_enum)]
    pub outcome: Option<Outcome>,

    /// Print at most N rows.
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true, default_value = "50")]
    pub limit: i64,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// A consent channel, as the `channel` column of the `opt_outs` view names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Channel {
    Email,
    Sms,
    Phone,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Phone => "phone",
        }
    }
}

/// The `outcome` of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Outcome {
    /// Normalized into its kind's table.
    Stored,
    /// Kept, but the body could not be normalized.
    Quarantined,
    /// Kept, but the URL named no known kind.
    #[value(name = "unknown_kind", alias = "unknown-kind")]
    UnknownKind,
}

impl Outcome {
    /// Returns the SQL condition for this outcome. SQLite uses the partial
    /// index `deliveries_not_stored` only when the query repeats its
    /// `outcome <> 'stored'` term literally, hence the redundant term.
    fn condition(self) -> &'static str {
        match self {
            Outcome::Stored => "outcome = 'stored'",
            Outcome::Quarantined => "outcome <> 'stored' AND outcome = 'quarantined'",
            Outcome::UnknownKind => "outcome <> 'stored' AND outcome = 'unknown_kind'",
        }
    }
}

/// Runs one `query` subcommand. A closed standard output, as with
/// `| head -1`, ends it quietly and successfully.
pub fn run(command: QueryCommand) -> anyhow::Result<()> {
    match run_command(command) {
        Err(error) if output::is_broken_pipe(&error) => Ok(()),
        result => result,
    }
}

fn run_command(command: QueryCommand) -> anyhow::Result<()> {
    match command {
        QueryCommand::OptOuts(args) => opt_outs(args),
        QueryCommand::Bounces(args) => bounces(args),
        QueryCommand::LeadStatus(args) => lead_status(args),
        QueryCommand::Contact(args) => contact(args),
        QueryCommand::Events(args) => events(args),
    }
}

fn opt_outs(args: OptOutsArgs) -> anyhow::Result<()> {
    let window = TimeWindow::parse(&args.common.time)?;

    if args.current {
        return current_opt_outs(args, window);
    }
    let mut select = Select::new(
        "SELECT channel, dsid, address, received_at, delivery_id FROM opt_outs",
        "received_at DESC, delivery_id DESC",
    );
    window.apply(&mut select, "received_at >= :since", "received_at < :until");
    if let Some(channel) = args.channel {
        select.bind("channel = :channel", ":channel", channel.as_str().to_string());
    }
    if let Some(dsid) = args.dsid {
        select.bind("dsid = :dsid", ":dsid", dsid);
    }
    select.limit(args.limit);

    let connection = store::open_for_reading(&args.common.db.db)?;
    write_select(&connection, &select, &args.common)
}

/// `opt-outs --current`: the rows of
///   SELECT channel, dsid, address, changed_at, delivery_id FROM current_consent
///    WHERE consent = 'opted-out' ORDER BY changed_at DESC, delivery_id DESC
/// computed without the view's sort (see `consent`). The filters apply
/// after each contact's latest change is found, so --since cannot turn an
/// old opt-in into "still opted out".
fn current_opt_outs(args: OptOutsArgs, window: TimeWindow) -> anyhow::Result<()> {
    let database = &args.common.db.db;
    let connection = store::open_for_reading(database)?;
    let channels: Vec<consent::Channel> = consent::CHANNELS
        .iter()
        .filter(|channel| args.channel.is_none_or(|wanted| wanted.as_str() == channel.name))
        .copied()
        .collect();
    let mut changes: Vec<consent::Change> = consent::newest_changes(&connection, &channels)
        .with_context(|| query_failed(database))?
        .into_iter()
        .filter(|change| change.opted_out)
        .filter(|change| args.dsid.as_ref().is_none_or(|dsid| change.dsid.as_ref() == Some(dsid)))
        .filter(|change| window.since.as_ref().is_none_or(|since| change.changed_at >= *since))
        .filter(|change| window.until.as_ref().is_none_or(|until| change.changed_at < *until))
        .collect();
    changes.sort_unstable_by(|a, b| (&b.changed_at, b.delivery_id).cmp(&(&a.changed_at, a.delivery_id)));
    if let Some(limit) = args.limit {
        changes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }

    let columns = ["channel", "dsid", "address", "changed_at", "delivery_id"];
    let mut writer = RowWriter::new(output_format(&args.common), &columns, stdout_writer())?;
    for change in &changes {
        writer.write_row(&[
            ValueRef::Text(change.channel.as_bytes()),
            optional_text(&change.dsid),
            optional_text(&change.address),
            ValueRef::Text(change.changed_at.as_bytes()),
            ValueRef::Integer(change.delivery_id),
        ])?;
    }
    writer.finish()?;
    Ok(())
}

fn optional_text(value: &Option<String>) -> ValueRef<'_> {
    value.as_deref().map_or(ValueRef::Null, |text| ValueRef::Text(text.as_bytes()))
}

fn bounces(args: BouncesArgs) -> anyhow::Result<()> {
    let window = TimeWindow::parse(&args.common.time)?;
    let domain = args.domain.as_deref().map(normalize_domain).transpose()?;

    let mut select = Select::new(
        "SELECT b.bounced_at, b.email, b.reason, b.is_spam_complaint, b.dsid, b.message_id,
                b.received_at, b.delivery_id
           FROM email_bounces b",
        "b.received_at DESC, b.delivery_id DESC",
    );
    // Retries are left out through the small deliveries_duplicates index,
    // as the views do. A join to deliveries read a row of that large table,
    // bodies and all, for every bounce: 180 ms instead of 110 ms for 80,000
    // bounces.
    select.condition("b.delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)");
    if args.spam_only {
        select.condition("b.is_spam_complaint = 1");
    }
    if let Some(domain) = domain {
        select.bind("b.email_domain = :domain", ":domain", domain);
    }
    if let Some(dsid) = args.dsid {
        select.bind("b.dsid = :dsid", ":dsid", dsid);
    }
    window.apply(&mut select, "b.received_at >= :since", "b.received_at < :until");
    select.limit(args.limit);

    let connection = store::open_for_reading(&args.common.db.db)?;
    write_select(&connection, &select, &args.common)
}

fn lead_status(args: LeadStatusArgs) -> anyhow::Result<()> {
    let window = TimeWindow::parse(&args.common.time)?;

    let mut select = Select::new(
        "SELECT lead_id, dsid, previous_status, status, changed_at, delivery_id FROM lead_status_history",
        "lead_id, changed_at, delivery_id",
    );
    if let Some(dsid) = &args.dsid {
        select.bind("dsid = :dsid", ":dsid", dsid.clone());
    }
    window.apply(&mut select, "changed_at >= :since", "changed_at < :until");

    let database = &args.common.db.db;
    let connection = store::open_for_reading(database)?;

    // With --dsid alone, find the contact's leads first (through the index
    // lead_status_changes_dsid), then read them one by one. A plain
    // condition on dsid would be as fast, because lead_status_history looks
    // up each previous_status through an index rather than computing every
    // lead's history first.
    let leads = match (args.lead, &args.dsid) {
        (Some(lead), _) => vec![Value::Integer(lead)],
        (None, Some(dsid)) => leads_of_contact(&connection, dsid).with_context(|| query_failed(database))?,
        (None, None) => return lead_histories(&connection, &window, args.limit, &args.common),
    };

    let columns = column_names(&connection, &select).with_context(|| query_failed(database))?;
    let column_refs: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut writer = RowWriter::new(output_format(&args.common), &column_refs, stdout_writer())?;
    let mut remaining = args.limit;
    for lead in leads {
        if remaining == Some(0) {
            break;
        }
        let mut lead_select = select.clone();
        lead_select.bind("lead_id IS :lead", ":lead", lead);
        lead_select.limit(remaining);
        let written = write_rows(&connection, &lead_select, &mut writer, database)?;
        remaining = remaining.map(|limit| limit - written);
    }
    writer.finish()?;
    Ok(())
}

/// `lead-status` without --lead or --dsid: the rows of
///   SELECT lead_id, dsid, previous_status, status, changed_at, delivery_id
///     FROM lead_status_history ORDER BY lead_id, changed_at, delivery_id
/// read in one ordered pass over the covering index
/// lead_status_changes_lead. Each change's previous status is the status
/// of the row before it. The view looks it up in the index for every row,
/// and on 1,000,000 deliveries that lookup was half of its time. A test
/// compares the two. --since and --until pick rows after the previous
/// status is known, so the first change in the window still shows it.
fn lead_histories(connection: &Connection, window: &TimeWindow, limit: Option<i64>, common: &CommonArgs) -> anyhow::Result<()> {
    let database = &common.db.db;
    let retries = store::retry_ids(connection).with_context(|| query_failed(database))?;
    let mut statement = connection
        .prepare(
            "SELECT lead_id, dsid, status, received_at, delivery_id FROM lead_status_changes
              ORDER BY lead_id, received_at, delivery_id",
        )
        .with_context(|| query_failed(database))?;
    let mut rows = statement.query([]).with_context(|| query_failed(database))?;

    let columns = ["lead_id", "dsid", "previous_status", "status", "changed_at", "delivery_id"];
    let mut writer = RowWriter::new(output_format(common), &columns, stdout_writer())?;
    let mut remaining = limit;
    // The lead and status of the last change read that is not a retry.
    let mut previous: Option<(Value, Value)> = None;
    while let Some(row) = rows.next().with_context(|| query_failed(database))? {
        let delivery_id: i64 = row.get(4)?;
        if retries.contains(&delivery_id) {
            continue;
        }
        let lead = owned(row.get_ref(0)?);
        let status = owned(row.get_ref(2)?);
        let changed_at = row.get_ref(3)?.as_str().unwrap_or_default();
        let previous_status = match &previous {
            Some((previous_lead, previous_status)) if *previous_lead == lead => ValueRef::from(previous_status),
            _ => ValueRef::Null,
        };
        let in_window = window.since.as_deref().is_none_or(|since| changed_at >= since)
            && window.until.as_deref().is_none_or(|until| changed_at < until);
        if in_window {
            if remaining == Some(0) {
                break;
            }
            writer.write_row(&[
                ValueRef::from(&lead),
                row.get_ref(1)?,
                previous_status,
                ValueRef::from(&status),
                ValueRef::Text(changed_at.as_bytes()),
                ValueRef::Integer(delivery_id),
            ])?;
            remaining = remaining.map(|left| left - 1);
        }
        previous = Some((lead, status));
    }
    writer.finish()?;
    Ok(())
}

/// Copies a value so that it outlives its row. Text that is not UTF-8
/// (written by another tool) gets U+FFFD in place of invalid bytes, as in
/// every other report.
fn owned(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Text(bytes) => Value::Text(String::from_utf8_lossy(bytes).into_owned()),
        other => Value::from(other),
    }
}

/// Returns the lead ids (NULL included) of a contact's lead status
/// changes, in ascending order as `ORDER BY lead_id` sorts them.
fn leads_of_contact(connection: &Connection, dsid: &str) -> rusqlite::Result<Vec<Value>> {
    let mut statement = connection
        .prepare("SELECT DISTINCT lead_id FROM lead_status_changes WHERE dsid = ?1 ORDER BY lead_id")?;
    let leads = statement.query_map([dsid], |row| row.get::<_, Value>(0))?;
    leads.collect()
}

fn events(args: EventsArgs) -> anyhow::Result<()> {
    let window = TimeWindow::parse(&args.common.time)?;

    let mut select = Select::new(
        "SELECT id, received_at, kind, outcome, error, body_bytes, duplicate_of FROM deliveries",
        "received_at DESC, id DESC",
    );
    if let Some(kind) = args.kind {
        select.bind("kind = :kind", ":kind", kind);
    }
    if let Some(outcome) = args.outcome {
        select.condition(outcome.condition());
    }
    window.apply(&mut select, "received_at >= :since", "received_at < :until");
    select.limit(Some(args.limit));

    let connection = store::open_for_reading(&args.common.db.db)?;
    let written = write_select_counted(&connection, &select, &args.common)?;
    if written == args.limit && more_rows_than(&connection, &select, args.limit, &args.common.db.db)? {
        // On stderr, so that piped rows stay clean.
        eprintln!(
            "dsevents: showed the newest {written} matching deliveries; more match, so pass --limit N to see more, or --since and --until to narrow the time"
        );
    }
    Ok(())
}

/// Returns true if `select` without its limit would return more than
/// `limit` rows.
fn more_rows_than(connection: &Connection, select: &Select, limit: i64, database: &Path) -> anyhow::Result<bool> {
    let mut probe = select.clone();
    probe.limit(Some(limit.saturating_add(1)));
    let sql = format!("SELECT count(*) FROM ({})", probe.sql());
    let count: i64 = connection
        .query_row(&sql, probe.params().as_slice(), |row| row.get(0))
        .with_context(|| query_failed(database))?;
    Ok(count > limit)
}

fn contact(args: ContactArgs) -> anyhow::Result<()> {
    let window = TimeWindow::parse(&args.common.time)?;

    let mut select = Select::new(
        "SELECT id, received_at, kind, outcome, error FROM deliveries",
        "received_at, id",
    );
    select.bind(contact_condition(), ":dsid", args.dsid);
    select.condition("duplicate_of IS NULL");
    window.apply(&mut select, "received_at >= :since", "received_at < :until");
    select.limit(args.limit);

    let database = &args.common.db.db;
    let connection = store::open_for_reading(database)?;
    let mut statement = connection.prepare(&select.sql()).with_context(|| query_failed(database))?;
    let mut rows = statement.query(select.params().as_slice()).with_context(|| query_failed(database))?;

    let columns = ["received_at", "kind", "outcome", "summary", "delivery_id"];
    let mut writer = RowWriter::new(output_format(&args.common), &columns, stdout_writer())?;
    while let Some(row) = rows.next().with_context(|| query_failed(database))? {
        let id: i64 = row.get(0)?;
        let kind: String = row.get(2)?;
        let error: Option<String> = row.get(4)?;
        let summary = summarize(&connection, &kind, id, error).with_context(|| query_failed(database))?;
        writer.write_row(&[
            row.get_ref(1)?,
            ValueRef::Text(kind.as_bytes()),
            row.get_ref(3)?,
            ValueRef::Text(summary.as_bytes()),
            ValueRef::Integer(id),
        ])?;
    }
    writer.finish()?;
    Ok(())
}

/// Returns the condition that picks a contact's deliveries: their ids,
/// read from each kind's table through its dsid index. `deliveries` has no
/// index on dsid, because one with random keys would cost every insert a
/// page write.
fn contact_condition() -> &'static str {
    static CONDITION: OnceLock<String> = OnceLock::new();
    CONDITION.get_or_init(|| {
        let selects: Vec<String> = catalog::KINDS
            .iter()
            .filter(|kind| kind.fields.iter().any(|field| field.column == "dsid"))
            .map(|kind| format!("SELECT delivery_id FROM {} WHERE dsid = :dsid", kind.table))
            .collect();
        // Deliveries that were not normalized have no row in a kind's
        // table; the few there are come through deliveries_not_stored.
        format!(
            "id IN ({} UNION ALL SELECT id FROM deliveries WHERE outcome <> 'stored' AND dsid = :dsid)",
            selects.join(" UNION ALL ")
        )
    })
}

/// Builds the `summary` column of `contact` for delivery `id` from its row
/// in the kind's table. A delivery without a row (quarantined, or of an
/// unknown kind) is summarized by its error.
fn summarize(connection: &Connection, slug: &str, id: i64, error: Option<String>) -> rusqlite::Result<String> {
    let Some(kind) = catalog::by_slug(slug) else {
        return Ok(error.unwrap_or_default());
    };
    // The table and column names come from the catalogue, never from input.
    let columns = kind.columns();
    let sql = format!("SELECT {} FROM {} WHERE delivery_id = ?1", columns.join(", "), kind.table);
    let values: Option<Vec<Value>> = connection
        .prepare_cached(&sql)?
        .query_row([id], |row| (0..columns.len()).map(|index| row.get::<_, Value>(index)).collect())
        .optional()?;
    let Some(values) = values else {
        return Ok(error.unwrap_or_default());
    };
    let row = KindRow { columns, values };
    Ok(describe(slug, &row))
}

/// One delivery's row in its kind's table, in `Kind::columns` order.
struct KindRow {
    columns: Vec<&'static str>,
    values: Vec<Value>,
}

impl KindRow {
    /// Returns the column's value as text, or None when it is NULL or empty.
    fn text(&self, column: &str) -> Option<String> {
        let index = self.columns.iter().position(|name| *name == column)?;
        match &self.values[index] {
            Value::Null => None,
            Value::Integer(number) => Some(number.to_string()),
            Value::Real(number) => Some(number.to_string()),
            Value::Text(text) if text.is_empty() => None,
            Value::Text(text) => Some(text.clone()),
            Value::Blob(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        }
    }

    /// Returns "column value" for each listed column that has a value,
    /// comma separated.
    fn labelled(&self, columns: &[&str]) -> String {
        let parts: Vec<String> = columns
            .iter()
            .filter_map(|column| self.text(column).map(|value| format!("{column} {value}")))
            .collect();
        parts.join(", ")
    }
}

/// Describes a normalized row in a few words for the contact timeline.
fn describe(slug: &str, row: &KindRow) -> String {
    let text = |column: &str| row.text(column).unwrap_or_default();
    match slug {
        "email-bounced" => {
            let mut summary = match (row.text("email"), row.text("reason")) {
                (Some(email), Some(reason)) => format!("{email}: {reason}"),
                (email, reason) => email.or(reason).unwrap_or_default(),
            };
            if row.text("is_spam_complaint").as_deref() == Some("1") {
                summary.push_str(" (spam complaint)");
            }
            summary
        }
        "email-opt-out" | "email-opt-in" => text("email"),
        "sms-opt-out" | "sms-opt-in" => text("mobile"),
        "lead-created" => row.labelled(&["lead_id"]),
        "lead-status-changed" => row.labelled(&["lead_id", "status"]),
        "contact-status-changed" => row.labelled(&["status"]),
        "contact-updated" => row.labelled(&["email", "mobile_phone", "status"]),
        "contact-update-failed" => text("error_message"),
        "text-reply" => match row.text("mobile") {
            Some(mobile) => format!("from {mobile}: {}", text("message")),
            None => text("message"),
        },
        "webform-submitted" => row.labelled(&["webform_name", "lead_id"]),
        // Phone consent carries no address. The other kinds carry no
        // contact id, so they do not appear in a contact's timeline.
        _ => String::new(),
    }
}

/// The `--since` and `--until` bounds as stored UTC text.
pub(crate) struct TimeWindow {
    pub(crate) since: Option<String>,
    pub(crate) until: Option<String>,
}

impl TimeWindow {
    /// Reads `--since` and `--until`. An unreadable value, or a --since not
    /// before --until, is a usage error naming the values.
    pub(crate) fn parse(options: &TimeArgs) -> Result<TimeWindow, UsageError> {
        let now = Utc::now();
        let read = |option: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|text| time::parse_point(text, now).map_err(|message| UsageError(format!("{option}: {message}"))))
                .transpose()
        };
        let since = read("--since", &options.since)?;
        let until = read("--until", &options.until)?;
        if let (Some(since_time), Some(until_time)) = (since, until) {
            if since_time >= until_time {
                return Err(UsageError(format!(
                    "--since {} is not before --until {}, so no row can match. Give an earlier --since or a later --until",
                    time::format_utc(since_time),
                    time::format_utc(until_time)
                )));
            }
        }
        Ok(TimeWindow { since: since.map(time::format_utc), until: until.map(time::format_utc) })
    }

    /// Adds the bounds that were given, with the conditions of the report's
    /// time column. Stored times are ISO-8601 UTC text of one fixed width,
    /// so comparing text compares times.
    fn apply(&self, select: &mut Select, since_condition: &'static str, until_condition: &'static str) {
        if let Some(since) = &self.since {
            select.bind(since_condition, ":since", since.clone());
        }
        if let Some(until) = &self.until {
            select.bind(until_condition, ":until", until.clone());
        }
    }
}

/// A SELECT assembled from constant SQL text, with its named parameters.
#[derive(Clone)]
struct Select {
    from: &'static str,
    conditions: Vec<&'static str>,
    params: Vec<(&'static str, Value)>,
    order_by: &'static str,
    limit: Option<i64>,
}

impl Select {
    fn new(from: &'static str, order_by: &'static str) -> Select {
        Select { from, conditions: Vec::new(), params: Vec::new(), order_by, limit: None }
    }

    /// Adds a condition that has no parameter.
    fn condition(&mut self, condition: &'static str) {
        self.conditions.push(condition);
    }

    /// Adds a condition that uses the parameter `name` (with its colon),
    /// bound to `value`.
    fn bind(&mut self, condition: &'static str, name: &'static str, value: impl Into<Value>) {
        self.conditions.push(condition);
        self.params.push((name, value.into()));
    }

    /// Sets the maximum number of rows, or None for every row.
    fn limit(&mut self, limit: Option<i64>) {
        self.limit = limit;
    }

    fn sql(&self) -> String {
        let mut sql = self.from.to_string();
        if !self.conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&self.conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY ");
        sql.push_str(self.order_by);
        if self.limit.is_some() {
            sql.push_str(" LIMIT :limit");
        }
        sql
    }

    fn params(&self) -> Vec<(&str, &dyn ToSql)> {
        let mut params: Vec<(&str, &dyn ToSql)> =
            self.params.iter().map(|(name, value)| (*name, value as &dyn ToSql)).collect();
        if let Some(limit) = &self.limit {
            params.push((":limit", limit));
        }
        params
    }
}

/// Runs `select` and writes every row, with the SELECT's column names.
fn write_select(connection: &Connection, select: &Select, common: &CommonArgs) -> anyhow::Result<()> {
    write_select_counted(connection, select, common).map(|_| ())
}

/// Runs `select`, writes every row with the SELECT's column names, and
/// returns how many rows it wrote.
fn write_select_counted(connection: &Connection, select: &Select, common: &CommonArgs) -> anyhow::Result<i64> {
    let database = &common.db.db;
    let columns = column_names(connection, select).with_context(|| query_failed(database))?;
    let column_refs: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut writer = RowWriter::new(output_format(common), &column_refs, stdout_writer())?;
    let written = write_rows(connection, select, &mut writer, database)?;
    writer.finish()?;
    Ok(written)
}

fn column_names(connection: &Connection, select: &Select) -> rusqlite::Result<Vec<String>> {
    let statement = connection.prepare_cached(&select.sql())?;
    Ok(statement.column_names().into_iter().map(String::from).collect())
}

/// Writes the rows of `select` to `writer` and returns how many it wrote.
fn write_rows<W: Write>(
    connection: &Connection,
    select: &Select,
    writer: &mut RowWriter<W>,
    database: &Path,
) -> anyhow::Result<i64> {
    let mut statement = connection.prepare_cached(&select.sql()).with_context(|| query_failed(database))?;
    let column_count = statement.column_count();
    let mut rows = statement.query(select.params().as_slice()).with_context(|| query_failed(database))?;
    let mut written = 0;
    while let Some(row) = rows.next().with_context(|| query_failed(database))? {
        let values = (0..column_count).map(|index| row.get_ref(index)).collect::<Result<Vec<_>, _>>()?;
        writer.write_row(&values)?;
        written += 1;
    }
    Ok(written)
}

fn query_failed(database: &Path) -> String {
    format!("query failed on database {}", database.display())
}

fn output_format(common: &CommonArgs) -> Format {
    common.format.unwrap_or_else(Format::default_for_stdout)
}

fn stdout_writer() -> BufWriter<StdoutLock<'static>> {
    BufWriter::new(io::stdout().lock())
}

/// Reads `--limit`: a number of rows, 1 or more.
fn parse_limit(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(limit) if limit >= 1 => Ok(limit),
        _ => Err("expected a number of rows of 1 or more, such as 100".to_string()),
    }
}

/// Reads `--lead`: a lead id, 0 or more.
fn parse_lead(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(lead) if lead >= 0 => Ok(lead),
        _ => Err("not a lead id; give a number such as 1042".to_string()),
    }
}

/// Reads `--domain` the way `email_bounces.email_domain` stores it:
/// lowercase, without the @.
fn normalize_domain(text: &str) -> Result<String, UsageError> {
    let domain = text.trim().strip_prefix('@').unwrap_or(text.trim()).to_lowercase();
    if domain.is_empty() || domain.contains('@') {
        return Err(UsageError(format!(
            "invalid --domain '{text}': expected a domain such as example.com"
        )));
    }
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_must_be_positive() {
        assert_eq!(parse_limit("100"), Ok(100));
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("-3").is_err());
        assert!(parse_limit("ten").is_err());
    }

    #[test]
    fn lead_must_be_a_number() {
        assert_eq!(parse_lead("1042"), Ok(1042));
        assert!(parse_lead("abc").unwrap_err().contains("1042"));
        assert!(parse_lead("-1").is_err());
    }

    #[test]
    fn domain_is_lowercased_without_at() {
        assert_eq!(normalize_domain("@Example.COM").unwrap(), "example.com");
        assert_eq!(normalize_domain(" example.org ").unwrap(), "example.org");
        assert!(normalize_domain("@").is_err());
        assert!(normalize_domain("a@b.com").is_err());
    }

    #[test]
    fn select_adds_conditions_in_order() {
        let mut select = Select::new("SELECT id FROM deliveries", "id DESC");
        select.bind("kind = :kind", ":kind", "email-bounced".to_string());
        select.condition("outcome = 'stored'");
        select.limit(Some(5));
        assert_eq!(
            select.sql(),
            "SELECT id FROM deliveries WHERE kind = :kind AND outcome = 'stored' ORDER BY id DESC LIMIT :limit"
        );
        assert_eq!(select.params().len(), 2);
    }
}
