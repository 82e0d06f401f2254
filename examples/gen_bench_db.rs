//! Builds a database of synthetic DailyStory deliveries for
//! `scripts/bench-queries`, through the same `Delivery::new` and
//! `store::insert_delivery` that `serve` uses.
//!
//! Usage: `gen_bench_db PATH [COUNT] [SEED]` (defaults: 1,000,000 and 1).
//! PATH must not exist yet. The deliveries span the 365 days before now:
//!
//! * 200,000 contacts, of which the busiest 1% get a fifth of the events
//!   (so repeated opt-outs and opt-ins on each channel);
//! * 60,000 leads moved through statuses, the busiest 1% with a few dozen
//!   changes each;
//! * bounces spread over a handful of large mail providers and many small
//!   company domains, one in twenty a spam complaint;
//! * about 1% retries (an identical body again within minutes, marked with
//!   duplicate_of) and a few quarantined and unknown-kind deliveries.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::{Duration, Utc};
use dsevents::store::{self, Delivery};

const CONTACTS: u64 = 200_000;
const LEADS: u64 = 60_000;
/// Deliveries written per transaction.
const TRANSACTION_SIZE: u64 = 50_000;
/// The duplicate window `serve` uses by default (24 h), in milliseconds.
const DUPLICATE_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

const LARGE_PROVIDERS: &[&str] = &["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "aol.com"];
const LEAD_STATUSES: &[&str] = &["New", "Contacted", "Qualified", "Proposal", "Negotiation", "Won", "Lost"];
const BOUNCE_REASONS: &[&str] = &[
    "Permanent Delivery Failure - Address not deliverable",
    "Mailbox full",
    "Recipient marked the message as spam",
    "Domain not found",
];

/// Each kind with its share of deliveries, in thousandths.
const MIX: &[(&str, u64)] = &[
    ("contact-updated", 290),
    ("link-clicked", 150),
    ("lead-status-changed", 120),
    ("email-bounced", 80),
    ("email-opt-out", 50),
    ("email-opt-in", 20),
    ("sms-opt-out", 30),
    ("sms-opt-in", 15),
    ("phone-opt-out", 10),
    ("phone-opt-in", 5),
    ("text-reply", 50),
    ("lead-created", 50),
    ("webform-submitted", 50),
    ("contact-status-changed", 30),
    ("segment-created", 5),
    ("segment-updated", 10),
    ("user-created", 2),
    ("contact-update-failed", 3),
];

/// SplitMix64, so that a seed always builds the same database.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        value ^ (value >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// Returns an index below `bound` where the first 1% of indices (the
    /// busy contacts or leads) get a fifth of the picks.
    fn skewed(&mut self, bound: u64) -> u64 {
        if self.below(5) == 0 {
            self.below((bound / 100).max(1))
        } else {
            self.below(bound)
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Returns a 32-digit hex contact id, distinct for each contact, like DailyStory's.
fn dsid(contact: u64) -> String {
    let high = (contact + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let low = high.rotate_left(29) ^ 0xD1B5_4A32_D192_ED03;
    format!("{high:016x}{low:016x}")
}

/// Returns the contact a lead belongs to, so that each lead's events carry one dsid.
fn lead_contact(lead: u64) -> u64 {
    lead.wrapping_mul(2_654_435_761) % CONTACTS
}

fn email(contact: u64) -> String {
    // Two contacts in three use a large provider, the rest one of 2,000
    // company domains.
    if contact % 3 == 0 {
        format!("contact{contact}@company{}.example", contact / 3 % 2_000)
    } else {
        format!("contact{contact}@{}", LARGE_PROVIDERS[(contact / 3 % LARGE_PROVIDERS.len() as u64) as usize])
    }
}

fn mobile(contact: u64) -> String {
    format!("+1555{contact:07}")
}

/// Tracks each lead's last status so that histories move forward.
struct Leads {
    status: Vec<u8>,
}

impl Leads {
    fn next_status(&mut self, lead: u64, random: &mut Random) -> &'static str {
        let current = &mut self.status[lead as usize];
        // Mostly forward, but sometimes back a step, as sales teams do.
        let step = if random.below(5) == 0 && *current > 0 { -1 } else { 1 };
        *current = (*current as i64 + step).clamp(0, LEAD_STATUSES.len() as i64 - 1) as u8;
        LEAD_STATUSES[*current as usize]
    }
}

/// Builds the body of one delivery of `kind`. `serial` makes it unique.
fn body(kind: &str, serial: u64, random: &mut Random, leads: &mut Leads) -> String {
    let contact = random.skewed(CONTACTS);
    let dsid = dsid(contact);
    let lead = random.skewed(LEADS);
    match kind {
        "contact-updated" => format!(
            r#"{{"dsId":"{dsid}","email":"{}","mobilePhone":"{}","phone":null,"firstName":"First{contact}","lastName":"Last{contact}","salutation":"","title":"Buyer","company":"Company {}","status":"{}","optOut":{},"city":"Lisbon","region":"","country":"PT","postalCode":"1000-001","address":"Rua Augusta {serial}","geoCode":"","timezone":"Europe/Lisbon","gender":{},"dateBirth":null,"dateContactCreated":"2025-01-05T10:22:31.517","timestampCreated":"2025-01-05T10:22:31.517","dateContactLastModified":"/Date(1767225600000)/","dateFirstSeen":"2025-01-05T10:22:31","dateLastSeen":"2026-03-01T14:05:09Z","dateLastContacted":"1753-01-01T00:00:00","accountId":1042,"extendedProperties":{{"plan":"pro","visits":{serial}}}}}"#,
            email(contact),
            mobile(contact),
            contact % 2_000,
            if random.below(20) == 0 { "Inactive" } else { "Active" },
            random.below(30) == 0,
            contact % 3,
        ),
        "link-clicked" => format!(r#"{{"id":"lnk-{}","click":{serial}}}"#, random.below(5_000)),
        "lead-status-changed" => format!(
            r#"{{"id":{},"dsid":"{}","status":"{}"}}"#,
            lead + 1,
            self::dsid(lead_contact(lead)),
            leads.next_status(lead, random)
        ),
        "email-bounced" => format!(
            r#"{{"dsid":"{dsid}","email":"{}","date":"2026-03-01T14:05:09.517","messageid":"<{serial}@mail.example.com>","is_spam_complaint":"{}","reason":"{}"}}"#,
            email(contact),
            random.below(20) == 0,
            random.pick(BOUNCE_REASONS),
        ),
        "email-opt-out" | "email-opt-in" => format!(r#"{{"dsid":"{dsid}","email":"{}"}}"#, email(contact)),
        "sms-opt-out" | "sms-opt-in" => format!(r#"{{"dsid":"{dsid}","mobile":"{}"}}"#, mobile(contact)),
        "phone-opt-out" | "phone-opt-in" => format!(r#"{{"dsid":"{dsid}"}}"#),
        "text-reply" => format!(
            r#"{{"dsid":"{dsid}","mobile":"{}","message":"{} \ud83d\udc4d #{serial}"}}"#,
            mobile(contact),
            random.pick(&["Yes", "STOP", "Call me tomorrow", "Thanks!"]),
        ),
        "lead-created" => format!(r#"{{"id":{},"dsid":"{}"}}"#, lead + 1, self::dsid(lead_contact(lead))),
        "webform-submitted" => format!(
            r#"{{"webform_id":"wf-{}","webform_name":"Contact us","lead_id":{},"dsid":"{}"}}"#,
            random.below(40),
            lead + 1,
            self::dsid(lead_contact(lead))
        ),
        "contact-status-changed" => {
            format!(r#"{{"dsid":"{dsid}","status":"{}"}}"#, random.pick(&["Active", "Inactive", "Spam", "Deleted"]))
        }
        "segment-created" | "segment-updated" => format!(
            r#"{{"id":"seg-{}","name":"Segment {serial}","status":"Active","description":"Bought in March","segment_type":"Dynamic","is_call_list":"False"}}"#,
            random.below(500)
        ),
        "user-created" => format!(r#"{{"email":"staff{serial}@example.com","useruid":"u-{serial}"}}"#),
        _ => format!(
            r#"[{{"ClassName":"System.Exception","Message":"Email is required"}},{{"dsId":"{dsid}","firstName":"First{contact}"}}]"#
        ),
    }
}

fn pick_kind(random: &mut Random) -> &'static str {
    let mut roll = random.below(MIX.iter().map(|(_, share)| share).sum());
    for (kind, share) in MIX {
        if roll < *share {
            return kind;
        }
        roll -= share;
    }
    MIX[0].0
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().context("usage: gen_bench_db PATH [COUNT] [SEED]")?);
    let count: u64 = args.next().map_or(Ok(1_000_000), |text| text.parse()).context("COUNT must be a whole number")?;
    let seed: u64 = args.next().map_or(Ok(1), |text| text.parse()).context("SEED must be a whole number")?;
    if path.exists() {
        bail!("{} already exists: remove it or pass another path", path.display());
    }

    let mut connection = store::open_or_create(&path)?;
    // Enough page cache to keep the indexes in memory while generating.
    connection.execute_batch("PRAGMA cache_size = -262144")?;
    let mut random = Random(seed);
    let mut leads = Leads { status: vec![0; LEADS as usize] };
    let end = Utc::now();
    let start = end - Duration::days(365);
    let step_ms = (end - start).num_milliseconds() as f64 / count as f64;
    // The last few bodies, so that retries repeat a recent one exactly.
    let mut recent: Vec<(&'static str, String)> = Vec::new();
    let mut recent_bodies = store::RecentBodies::new(DUPLICATE_WINDOW_MS);
    let started = Instant::now();

    let mut written = 0;
    while written < count {
        let tx = connection.transaction()?;
        let batch_end = (written + TRANSACTION_SIZE).min(count);
        for serial in written..batch_end {
            let received_at = dsevents::time::format_utc(start + Duration::milliseconds((serial as f64 * step_ms) as i64));
            let roll = random.below(1_000);
            let (kind, body) = if roll < 10 && !recent.is_empty() {
                recent[random.below(recent.len() as u64) as usize].clone()
            } else if roll < 12 {
                ("email-opt-out", format!(r#"{{"dsid":"{}","email":"#, dsid(serial % CONTACTS)))
            } else if roll < 13 {
                ("contact-merged", format!(r#"{{"dsid":"{}"}}"#, dsid(serial % CONTACTS)))
            } else {
                let kind = pick_kind(&mut random);
                (kind, body(kind, serial, &mut random, &mut leads))
            };
            if recent.len() < 64 {
                recent.push((kind, body.clone()));
            } else {
                recent[(serial % 64) as usize] = (kind, body.clone());
            }
            let delivery = Delivery::new(kind, body.into_bytes(), Some("application/json".to_string()), received_at);
            store::insert_delivery(&tx, &delivery, &mut recent_bodies)?;
        }
        tx.commit()?;
        recent_bodies.commit();
        written = batch_end;
        eprintln!("gen_bench_db: {written} of {count} deliveries written ({:.0} s)", started.elapsed().as_secs_f64());
    }

    connection.execute_batch("PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}
