//! The event catalogue: every DailyStory webhook kind this receiver reads,
//! with its URL slug, its table in `schema.sql` and its documented fields.
//!
//! Adding a kind means one entry in `KINDS` and one table in `schema.sql`;
//! a test checks that the two agree column by column.

/// The storage type of a documented field's column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Stored as text; numbers and booleans sent in its place are kept as their text.
    Text,
    /// A 64-bit integer; numeric strings such as `"1042"` are accepted.
    Integer,
    /// 0 or 1; `true`, `"False"`, `"1"`, `0` and similar forms are accepted.
    Bool,
    /// A time normalized to UTC ISO-8601 in `column`, with the value as
    /// received kept in the named text column.
    Time { text_column: &'static str },
    /// Any JSON value, stored as compact JSON text.
    Json,
}

/// One documented field of an event body.
#[derive(Debug)]
pub struct Field {
    /// Column name in the kind's table.
    pub column: &'static str,
    /// Accepted body keys, compared after `canonical_key`.
    pub keys: &'static [&'static str],
    pub ty: FieldType,
}

/// The body shape of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A JSON object whose documented keys map to columns.
    Object,
    /// The "Contact Create or Update Failed" body: an exception and the
    /// original object, in an undocumented wrapper.
    ExceptionAndOriginal,
}

/// One DailyStory event kind.
#[derive(Debug)]
pub struct Kind {
    /// The `{kind}` part of `POST /hooks/{kind}`.
    pub slug: &'static str,
    /// The event's name in DailyStory's webhook settings.
    pub name: &'static str,
    /// Names that older DailyStory documentation used for the same event.
    pub older_names: &'static [&'static str],
    pub table: &'static str,
    pub shape: Shape,
    pub fields: &'static [Field],
}

impl Kind {
    /// Returns the table's columns in insert order: every field column, and
    /// after a time column its text column.
    pub fn columns(&self) -> Vec<&'static str> {
        let mut columns = Vec::new();
        for field in self.fields {
            columns.push(field.column);
            if let FieldType::Time { text_column } = field.ty {
                columns.push(text_column);
            }
        }
        columns
    }
}

/// Lowercases a body key and drops `_` and `-`, so that `dsId`, `DSID`,
/// `ds_id` and `dsid` all match the same field.
pub fn canonical_key(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

macro_rules! field {
    ($column:literal, [$($key:literal),+], $ty:expr) => {
        Field { column: $column, keys: &[$($key),+], ty: $ty }
    };
}

use FieldType::{Bool, Integer, Json, Text};

const fn time(text_column: &'static str) -> FieldType {
    FieldType::Time { text_column }
}

const DSID: Field = field!("dsid", ["dsid"], Text);
const EMAIL: Field = field!("email", ["email"], Text);
const MOBILE: Field = field!("mobile", ["mobile"], Text);

pub static KINDS: &[Kind] = &[
    Kind {
        slug: "contact-updated",
        name: "Contact Created or Updated",
        older_names: &["New Contact"],
        table: "contact_updates",
        shape: Shape::Object,
        fields: &[
            DSID,
            EMAIL,
            field!("mobile_phone", ["mobilephone"], Text),
            field!("phone", ["phone"], Text),
            field!("first_name", ["firstname"], Text),
            field!("last_name", ["lastname"], Text),
            field!("salutation", ["salutation"], Text),
            field!("title", ["title"], Text),
            field!("company", ["company"], Text),
            field!("status", ["status"], Text),
            field!("opt_out", ["optout"], Bool),
            field!("city", ["city"], Text),
            field!("region", ["region"], Text),
            field!("country", ["country"], Text),
            field!("postal_code", ["postalcode"], Text),
            field!("address", ["address"], Text),
            field!("geo_code", ["geocode"], Text),
            field!("timezone", ["timezone"], Text),
            field!("gender", ["gender"], Integer),
            field!("date_birth", ["datebirth"], time("date_birth_text")),
            field!("date_contact_created", ["datecontactcreated"], time("date_contact_created_text")),
            field!("timestamp_created", ["timestampcreated"], time("timestamp_created_text")),
            field!(
                "date_contact_last_modified",
                ["datecontactlastmodified"],
                time("date_contact_last_modified_text")
            ),
            field!("date_first_seen", ["datefirstseen"], time("date_first_seen_text")),
            field!("date_last_seen", ["datelastseen"], time("date_last_seen_text")),
            field!("date_last_contacted", ["datelastcontacted"], time("date_last_contacted_text")),
            field!("account_id", ["accountid"], Integer),
            field!("extended_properties", ["extendedproperties"], Json),
        ],
    },
    Kind {
        slug: "contact-update-failed",
        name: "Contact Create or Update Failed",
        older_names: &[],
        table: "contact_update_failures",
        shape: Shape::ExceptionAndOriginal,
        fields: &[
            DSID,
            field!("error_message", ["message"], Text),
            field!("exception", ["exception"], Json),
            field!("original", ["original"], Json),
        ],
    },
    Kind {
        slug: "lead-created",
        name: "Lead Created",
        older_names: &["New Lead"],
        table: "leads_created",
        shape: Shape::Object,
        fields: &[field!("lead_id", ["id", "leadid"], Integer), DSID],
    },
    Kind {
        slug: "lead-status-changed",
        name: "Lead Status Changed",
        older_names: &[],
        table: "lead_status_changes",
        shape: Shape::Object,
        fields: &[
            field!("lead_id", ["id", "leadid"], Integer),
            DSID,
            field!("status", ["status"], Text),
        ],
    },
    Kind {
        slug: "contact-status-changed",
        name: "Contact Status Changed",
        older_names: &[],
        table: "contact_status_changes",
        shape: Shape::Object,
        fields: &[DSID, field!("status", ["status"], Text)],
    },
    Kind {
        slug: "link-clicked",
        name: "URL Shortener Clicked",
        older_names: &["Tracking Link Clicked"],
        table: "link_clicks",
        shape: Shape::Object,
        fields: &[field!("link_id", ["id", "linkid"], Text)],
    },
    Kind {
        slug: "text-reply",
        name: "Text Message Reply Received",
        older_names: &[],
        table: "text_replies",
        shape: Shape::Object,
        fields: &[DSID, MOBILE, field!("message", ["message"], Text)],
    },
    Kind {
        slug: "email-bounced",
        name: "Email Address Bounced",
        older_names: &[],
        table: "email_bounces",
        shape: Shape::Object,
        fields: &[
            DSID,
            EMAIL,
            field!("bounced_at", ["date"], time("date_text")),
            field!("message_id", ["messageid"], Text),
            field!("is_spam_complaint", ["isspamcomplaint"], Bool),
            field!("reason", ["reason"], Text),
        ],
    },
    Kind {
        slug: "email-opt-out",
        name: "Opted out of Email",
        older_names: &[],
        table: "email_opt_outs",
        shape: Shape::Object,
        fields: &[DSID, EMAIL],
    },
    Kind {
        slug: "sms-opt-out",
        name: "Opted out of Text Messaging",
        older_names: &[],
        table: "sms_opt_outs",
        shape: Shape::Object,
        fields: &[DSID, MOBILE],
    },
    Kind {
        slug: "phone-opt-out",
        name: "Opted out of Phone Calls",
        older_names: &[],
        table: "phone_opt_outs",
        shape: Shape::Object,
        fields: &[DSID],
    },
    Kind {
        slug: "email-opt-in",
        name: "Opted in to Email",
        older_names: &[],
        table: "email_opt_ins",
        shape: Shape::Object,
        fields: &[DSID, EMAIL],
    },
    Kind {
        slug: "sms-opt-in",
        name: "Opted in to Text Messaging",
        older_names: &[],
        table: "sms_opt_ins",
        shape: Shape::Object,
        fields: &[DSID, MOBILE],
    },
    Kind {
        slug: "phone-opt-in",
        name: "Opted in to Phone Calls",
        older_names: &[],
        table: "phone_opt_ins",
        shape: Shape::Object,
        fields: &[DSID],
    },
    Kind {
        slug: "webform-submitted",
        name: "Web Form Submitted",
        older_names: &[],
        table: "webform_submissions",
        shape: Shape::Object,
        fields: &[
            field!("webform_id", ["webformid"], Text),
            field!("webform_name", ["webformname"], Text),
            field!("lead_id", ["leadid"], Integer),
            DSID,
        ],
    },
    Kind {
        slug: "segment-created",
        name: "Segment Created",
        older_names: &[],
        table: "segments_created",
        shape: Shape::Object,
        fields: &[
            field!("segment_id", ["id", "segmentid"], Text),
            field!("name", ["name"], Text),
            field!("description", ["description"], Text),
            field!("segment_type", ["segmenttype"], Text),
            field!("is_call_list", ["iscalllist"], Bool),
        ],
    },
    Kind {
        slug: "segment-updated",
        name: "Segment Updated",
        older_names: &[],
        table: "segments_updated",
        shape: Shape::Object,
        fields: &[
            field!("segment_id", ["id", "segmentid"], Text),
            field!("name", ["name"], Text),
            field!("status", ["status"], Text),
            field!("description", ["description"], Text),
            field!("segment_type", ["segmenttype"], Text),
            field!("is_call_list", ["iscalllist"], Bool),
        ],
    },
    Kind {
        slug: "user-created",
        name: "User Created",
        older_names: &[],
        table: "users_created",
        shape: Shape::Object,
        fields: &[EMAIL, field!("user_uid", ["useruid"], Text)],
    },
];

/// Finds a kind by its URL slug.
pub fn by_slug(slug: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|kind| kind.slug == slug)
}

/// Returns the kind that undoes `slug`'s effect (an opt-in for an opt-out
/// on the same channel, and the reverse), if there is one.
pub fn opposite(slug: &str) -> Option<&'static str> {
    const PAIRS: [(&str, &str); 3] = [
        ("email-opt-out", "email-opt-in"),
        ("sms-opt-out", "sms-opt-in"),
        ("phone-opt-out", "phone-opt-in"),
    ];
    PAIRS.iter().find_map(|(out, into)| match slug {
        s if s == *out => Some(*into),
        s if s == *into => Some(*out),
        _ => None,
    })
}

/// Returns every slug, comma separated, for help and error text.
pub fn slug_list() -> String {
    KINDS.iter().map(|kind| kind.slug).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every catalogue column exists in schema.sql, in the same order, after
    /// delivery_id and received_at.
    #[test]
    fn catalogue_matches_schema() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        connection.execute_batch(crate::store::SCHEMA_SQL).unwrap();
        for kind in KINDS {
            let mut statement = connection.prepare(&format!("PRAGMA table_info({})", kind.table)).unwrap();
            let columns: Vec<String> = statement.query_map([], |row| row.get(1)).unwrap().map(Result::unwrap).collect();
            let mut expected = vec!["delivery_id", "received_at"];
            expected.extend(kind.columns());
            assert_eq!(columns, expected, "table {}", kind.table);
        }
    }

    #[test]
    fn slugs_and_tables_are_unique() {
        for (index, kind) in KINDS.iter().enumerate() {
            for other in &KINDS[index + 1..] {
                assert_ne!(kind.slug, other.slug);
                assert_ne!(kind.table, other.table);
            }
        }
        assert_eq!(KINDS.len(), 18);
    }
}
