//! `dsevents forget`: erases one person (a GDPR or CCPA erasure request)
//! from every normalized table and every raw body that mentions them, and
//! records the request in `erasure_requests` without the personal data.
//!
//! The person is found by the identifier given, and also by the contact ids,
//! email addresses and mobile numbers that rows matching it carry, so an
//! erasure by email also removes that contact's text replies. The search
//! runs in a read transaction; only the erasure takes the write lock, so
//! `serve` keeps responding while the bodies are scanned.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args};
use rusqlite::{params, Connection, TransactionBehavior};
use serde_json::json;

use crate::catalog::{self, FieldType, KINDS};
use crate::cli::{DbArg, UsageError};
use crate::output::print_line;
use crate::time::now_text;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("person").required(true).args(["dsid", "email", "mobile"])))]
pub struct ForgetArgs {
    #[command(flatten)]
    pub db: DbArg,

    /// The person's DailyStory contact id.
    #[arg(long)]
    pub dsid: Option<String>,

    /// The person's email address (compared without regard to case).
    #[arg(long)]
    pub email: Option<String>,

    /// The person's mobile or phone number, at least 7 digits. Numbers are
    /// compared by their digits, with or without a leading country code of
    /// up to 3 digits, so +1 (555) 010-0100 matches 5550100100.
    #[arg(long)]
    pub mobile: Option<String>,

    /// Report what would be erased without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// The minimum number of digits a phone number needs to be compared.
/// Shorter runs of digits in a body (ids, amounts, years) would match
/// unrelated people.
const MIN_PHONE_DIGITS: usize = 7;

/// The maximum number of digits by which two numbers may differ and still
/// be the same number: a country code (ITU-T E.164 codes have 1 to 3).
const MAX_COUNTRY_CODE_DIGITS: usize = 3;

/// The identifiers that point at one person.
#[derive(Debug, Default)]
struct Person {
    dsids: BTreeSet<String>,
    /// Lowercased.
    emails: BTreeSet<String>,
    /// Digits only, each at least `MIN_PHONE_DIGITS` long.
    mobiles: BTreeSet<String>,
}

impl Person {
    fn matches(&self, dsid: Option<&str>, emails: &[String], mobiles: &[String]) -> bool {
        dsid.is_some_and(|dsid| self.dsids.contains(dsid))
            || emails.iter().any(|email| self.emails.contains(&email.to_lowercase()))
            || mobiles.iter().any(|mobile| self.has_number(&digits(mobile)))
    }

    fn absorb(&mut self, dsid: Option<&str>, emails: &[String], mobiles: &[String]) {
        self.dsids.extend(dsid.map(str::to_string));
        self.emails.extend(emails.iter().map(|email| email.to_lowercase()));
        self.mobiles
            .extend(mobiles.iter().map(|mobile| digits(mobile)).filter(|digits| digits.len() >= MIN_PHONE_DIGITS));
    }

    /// Returns true if and only if `number` (digits only) is one of the
    /// person's numbers.
    fn has_number(&self, number: &str) -> bool {
        self.mobiles.iter().any(|own| same_number(own, number))
    }

    /// Returns true if and only if a raw body mentions one of the identifiers.
    fn mentioned_in(&self, body: &[u8]) -> bool {
        let text = String::from_utf8_lossy(body).to_lowercase();
        // A contact id is matched as a whole JSON string, so a short id
        // cannot match inside unrelated text.
        if self.dsids.iter().any(|dsid| text.contains(&format!("\"{}\"", dsid.to_lowercase()))) {
            return true;
        }
        if self.emails.iter().any(|email| contains_address(&text, email)) {
            return true;
        }
        // Numbers appear formatted in bodies. Each phone-like run (digits
        // with + - ( ) . and space between them) is compared as one whole
        // number, never by a part of it.
        let mentioned = phone_like_runs(&text).any(|run| self.has_number(&run));
        mentioned
    }
}

fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// Returns true if and only if two numbers, as digits, are the same number:
/// equal, or equal except for a leading country code of at most
/// `MAX_COUNTRY_CODE_DIGITS` digits on one of them. Both need at least
/// `MIN_PHONE_DIGITS` digits.
///
/// NOTE: an area code looks like a country code here, so a 7-digit local
/// number matches a 10-digit number that ends with it.
fn same_number(a: &str, b: &str) -> bool {
    let (longer, shorter) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    shorter.len() >= MIN_PHONE_DIGITS
        && longer.len() - shorter.len() <= MAX_COUNTRY_CODE_DIGITS
        && longer.ends_with(shorter)
}

/// Returns the digits of each phone-like run in `text`: digits, and the
/// separators + - ( ) . and space between them.
fn phone_like_runs(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_ascii_digit() || " +-().".contains(c)))
        .map(digits)
        .filter(|run| !run.is_empty())
}

/// Returns true if and only if `text` contains `address` as a whole
/// address: not preceded by a character that an address's local part can
/// hold, and not followed by a letter or digit of a longer domain. So
/// bob@example.com is not found in jimbob@example.com or bob@example.com.au.
fn contains_address(text: &str, address: &str) -> bool {
    const LOCAL_PART_SYMBOLS: &str = ".!#$%&'*+/=?^_`{|}~-";
    let continues_domain = |rest: &str| {
        let mut chars = rest.chars();
        match chars.next() {
            Some(c) if c.is_alphanumeric() => true,
            Some('.') => chars.next().is_some_and(char::is_alphanumeric),
            _ => false,
        }
    };
    text.match_indices(address).any(|(start, _)| {
        let before = text[..start].chars().next_back();
        let after = &text[start + address.len()..];
        !before.is_some_and(|c| c.is_alphanumeric() || LOCAL_PART_SYMBOLS.contains(c)) && !continues_domain(after)
    })
}

/// One normalized row's identifiers.
struct RowIds {
    delivery_id: i64,
    table: &'static str,
    dsid: Option<String>,
    emails: Vec<String>,
    mobiles: Vec<String>,
}

pub fn run(args: ForgetArgs) -> anyhow::Result<()> {
    let mut person = Person::default();
    let identifier_type = if let Some(dsid) = &args.dsid {
        person.dsids.insert(dsid.trim().to_string());
        "dsid"
    } else if let Some(email) = &args.email {
        person.emails.insert(email.trim().to_lowercase());
        "email"
    } else {
        let mobile = args.mobile.as_deref().unwrap_or_default();
        let number = digits(mobile);
        if number.len() < MIN_PHONE_DIGITS {
            return Err(UsageError(format!(
                "--mobile '{mobile}' has fewer than {MIN_PHONE_DIGITS} digits; give the full number, such as +1 555 010 0100"
            ))
            .into());
        }
        person.mobiles.insert(number);
        "mobile"
    };
    if person.dsids.iter().chain(&person.emails).any(String::is_empty) {
        return Err(UsageError("the identifier is empty; give the person's dsid, email or mobile".to_string()).into());
    }

    let mut connection = crate::store::open_existing(&args.db.db)?;
    let erased = forget(&mut connection, person, identifier_type, args.dry_run)?;

    let verb = if args.dry_run { "would erase" } else { "erased" };
    if erased.is_empty() {
        print_line(format_args!("nothing found for that {identifier_type}; nothing {verb}"))?;
    }
    for (table, count) in &erased {
        print_line(format_args!("{verb} {count} rows in {table}"))?;
    }
    if !args.dry_run {
        print_line(format_args!("recorded the request in erasure_requests without the identifier"))?;
    }
    Ok(())
}

/// Finds and erases the person. Returns rows erased per table (for
/// `deliveries`, the raw bodies removed).
fn forget(connection: &mut Connection, mut person: Person, identifier_type: &str, dry_run: bool) -> anyhow::Result<BTreeMap<String, u64>> {
    // Search in a read transaction, while serve keeps writing.
    let (rows, mut delivery_ids, scanned_to) = {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let rows = read_rows(&tx, 0)?;
        // Two rounds: rows matching the identifier given bring in that
        // contact's other identifiers, whose rows then match too.
        for _ in 0..2 {
            for row in &rows {
                if person.matches(row.dsid.as_deref(), &row.emails, &row.mobiles) {
                    person.absorb(row.dsid.as_deref(), &row.emails, &row.mobiles);
                }
            }
        }
        let (ids, scanned_to) = find_deliveries(&tx, &person, 0)?;
        tx.commit()?;
        (rows, ids, scanned_to)
    };
    let mut targets: Vec<(&'static str, i64)> = rows
        .iter()
        .filter(|row| person.matches(row.dsid.as_deref(), &row.emails, &row.mobiles))
        .map(|row| (row.table, row.delivery_id))
        .collect();

    // Erase under the write lock, after catching what arrived meanwhile.
    connection.execute_batch("PRAGMA secure_delete = ON")?;
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (late_ids, _) = find_deliveries(&tx, &person, scanned_to)?;
    delivery_ids.extend(late_ids);
    for row in read_rows(&tx, scanned_to)? {
        if person.matches(row.dsid.as_deref(), &row.emails, &row.mobiles) {
            targets.push((row.table, row.delivery_id));
        }
    }
    // A delivery's own normalized row goes with its body.
    let kinds: Vec<(i64, String)> = {
        let mut statement = tx.prepare("SELECT id, kind FROM deliveries WHERE id = ?1")?;
        let mut found = Vec::new();
        for id in &delivery_ids {
            found.push((*id, statement.query_row([id], |row| row.get::<_, String>(1))?));
        }
        found
    };
    for (id, kind) in kinds {
        if let Some(known) = catalog::by_slug(&kind) {
            targets.push((known.table, id));
        }
    }
    targets.sort_unstable();
    targets.dedup();

    let mut erased: BTreeMap<String, u64> = BTreeMap::new();
    for (table, id) in &targets {
        let removed = if dry_run {
            tx.query_row(&format!("SELECT count(*) FROM {table} WHERE delivery_id = ?1"), [id], |row| row.get::<_, u64>(0))?
        } else {
            tx.execute(&format!("DELETE FROM {table} WHERE delivery_id = ?1"), [id])? as u64
        };
        if removed > 0 {
            *erased.entry(table.to_string()).or_default() += removed;
        }
        delivery_ids.insert(*id);
    }

    let removed_at = now_text();
    for id in &delivery_ids {
        let changed = if dry_run {
            tx.query_row("SELECT count(*) FROM deliveries WHERE id = ?1 AND (body IS NOT NULL OR dsid IS NOT NULL)", [id], |row| row.get::<_, usize>(0))?
        } else {
            tx.execute(
                "UPDATE deliveries SET body = NULL, error = NULL, dsid = NULL,
                        body_removed_at = ?2, body_removed_by = 'forget'
                  WHERE id = ?1 AND (body IS NOT NULL OR dsid IS NOT NULL)",
                params![id, removed_at],
            )?
        };
        if changed > 0 {
            *erased.entry("deliveries".to_string()).or_default() += changed as u64;
        }
    }

    if dry_run {
        tx.rollback()?;
        return Ok(erased);
    }
    tx.execute(
        "INSERT INTO erasure_requests (requested_at, identifier_type, erased) VALUES (?1, ?2, ?3)",
        params![removed_at, identifier_type, json!(erased).to_string()],
    )?;
    tx.commit()?;
    if !truncate_wal(connection)? {
        eprintln!(
            "dsevents: warning: another program kept a read transaction open on the database for {} s, \
             so the WAL file ({}-wal) may still hold the erased values. Run the same forget again \
             once no report, backup or other reader is running: it finds nothing more to erase \
             and clears the WAL.",
            WAL_TRUNCATE_PATIENCE.as_secs(),
            connection.path().unwrap_or("the database")
        );
    }
    Ok(erased)
}

/// How long `truncate_wal` retries while readers use the WAL.
const WAL_TRUNCATE_PATIENCE: Duration = Duration::from_secs(10);

/// Copies the WAL into the database file and truncates it, so that the old
/// contents of the erased rows do not linger in WAL frames. Returns false
/// if readers kept the WAL in use for `WAL_TRUNCATE_PATIENCE`.
///
/// A TRUNCATE checkpoint holds the write lock while its busy handler waits
/// for readers, so with the usual 5 s busy timeout serve's writer waited
/// behind it and responded 503 to deliveries. Each attempt therefore waits at
/// most `ATTEMPT_BUSY_TIMEOUT`, and the retries sleep without the lock.
fn truncate_wal(connection: &Connection) -> anyhow::Result<bool> {
    const ATTEMPT_BUSY_TIMEOUT: Duration = Duration::from_millis(20);
    connection.busy_timeout(ATTEMPT_BUSY_TIMEOUT)?;
    let deadline = Instant::now() + WAL_TRUNCATE_PATIENCE;
    let truncated = loop {
        let busy: i64 = connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy == 0 {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    connection.busy_timeout(crate::store::BUSY_TIMEOUT)?;
    Ok(truncated)
}

/// Reads the identifiers of every normalized row of deliveries after `after_id`.
fn read_rows(connection: &Connection, after_id: i64) -> rusqlite::Result<Vec<RowIds>> {
    let mut rows = Vec::new();
    for kind in KINDS {
        let columns: Vec<(&str, &str)> = kind
            .fields
            .iter()
            .filter(|field| field.ty == FieldType::Text)
            .filter_map(|field| match field.column {
                "dsid" => Some(("dsid", field.column)),
                "email" => Some(("email", field.column)),
                "mobile" | "mobile_phone" | "phone" => Some(("mobile", field.column)),
                _ => None,
            })
            .collect();
        if columns.is_empty() {
            continue;
        }
        let names: Vec<&str> = columns.iter().map(|(_, column)| *column).collect();
        let sql = format!("SELECT delivery_id, {} FROM {} WHERE delivery_id > ?1", names.join(", "), kind.table);
        let mut statement = connection.prepare(&sql)?;
        let mut query = statement.query([after_id])?;
        while let Some(row) = query.next()? {
            let mut ids = RowIds { delivery_id: row.get(0)?, table: kind.table, dsid: None, emails: vec![], mobiles: vec![] };
            for (index, (role, _)) in columns.iter().enumerate() {
                let Some(value) = row.get::<_, Option<String>>(index + 1)? else {
                    continue;
                };
                match *role {
                    "dsid" => ids.dsid = Some(value),
                    "email" => ids.emails.push(value),
                    _ => ids.mobiles.push(value),
                }
            }
            rows.push(ids);
        }
    }
    Ok(rows)
}

/// Returns the deliveries after `after_id` whose contact id or raw body
/// points at the person, and the highest delivery id examined.
fn find_deliveries(connection: &Connection, person: &Person, after_id: i64) -> rusqlite::Result<(BTreeSet<i64>, i64)> {
    let mut found = BTreeSet::new();
    let mut highest = after_id;
    let mut statement = connection.prepare("SELECT id, dsid, body FROM deliveries WHERE id > ?1 ORDER BY id")?;
    let mut rows = statement.query([after_id])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        highest = id;
        let dsid: Option<String> = row.get(1)?;
        let body: Option<Vec<u8>> = row.get(2)?;
        let by_dsid = dsid.is_some_and(|dsid| person.dsids.contains(&dsid));
        if by_dsid || body.is_some_and(|body| person.mentioned_in(&body)) {
            found.insert(id);
        }
    }
    Ok((found, highest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_whole_or_with_country_code() {
        assert!(same_number("5550100100", "5550100100"));
        assert!(same_number("15550100100", "5550100100"));
        assert!(same_number("5550100100", "445550100100"));
        assert!(!same_number("15550100100", "0100100"), "more than a country code apart");
        assert!(!same_number("5550100100", "5550100101"));
        assert!(!same_number("202603", "202603"), "too short to compare");
    }

    #[test]
    fn runs_split_at_other_characters() {
        let runs: Vec<String> = phone_like_runs(r#"{"m":"+1 (555) 010-0100","d":"2026-03-01t14:05"}"#).collect();
        assert_eq!(runs, ["15550100100", "20260301", "14", "05"]);
    }

    #[test]
    fn address_must_stand_alone() {
        assert!(contains_address(r#"{"email":"bob@example.com"}"#, "bob@example.com"));
        assert!(contains_address(r#"{"id":"bob@example.com-link"}"#, "bob@example.com"));
        assert!(!contains_address(r#"{"email":"jimbob@example.com"}"#, "bob@example.com"));
        assert!(!contains_address(r#"{"email":"bob@example.com.au"}"#, "bob@example.com"));
        assert!(!contains_address(r#"{"email":"bob@example.community"}"#, "bob@example.com"));
    }
}
