//! Turning a raw DailyStory body into the typed values of its kind's table.
//!
//! Parsing is tolerant in the ways real senders vary (see the spec of
//! DailyStory webhooks): a UTF-8 byte order mark, key case, numbers and
//! booleans sent as strings, several date forms, lone UTF-16 surrogates.
//! A value that is present but cannot be read as its field's type is an
//! error, and the delivery is quarantined with that error as its reason.

use std::collections::HashMap;

use serde_json::Value as Json;

use crate::catalog::{canonical_key, FieldType, Kind, Shape};
use crate::time::{format_utc, from_unix_number, parse_event_time};

/// A value bound to one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Text(String),
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(number) => ToSqlOutput::Borrowed(ValueRef::Integer(*number)),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        })
    }
}

/// A body read into its kind's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// One value per entry of `Kind::columns`, in that order.
    pub values: Vec<Value>,
    /// The contact id, when the body carries one.
    pub dsid: Option<String>,
}

/// Parses a body as JSON, tolerating a byte order mark, bytes that are not
/// UTF-8 and lone UTF-16 surrogate escapes (which become U+FFFD).
pub fn parse_json(body: &[u8]) -> Result<Json, String> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        return Err("body is empty".to_string());
    }

    match serde_json::from_str(&text) {
        Ok(json) => Ok(json),
        Err(first_error) => {
            let repaired = replace_lone_surrogates(&text);
            if repaired == text {
                return Err(format!("body is not valid JSON: {first_error}"));
            }
            serde_json::from_str(&repaired).map_err(|_| format!("body is not valid JSON: {first_error}"))
        }
    }
}

/// Rewrites `\uD800`-`\uDFFF` escapes that are not part of a surrogate pair
/// as `\uFFFD`. Other text, including escaped backslashes, is copied as is.
fn replace_lone_surrogates(text: &str) -> String {
    fn hex_at(bytes: &[u8], at: usize) -> Option<u16> {
        let digits = bytes.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    }
    fn is_escape_at(bytes: &[u8], at: usize) -> bool {
        bytes.get(at) == Some(&b'\\') && bytes.get(at + 1) == Some(&b'u')
    }

    let bytes = text.as_bytes();
    let mut output = String::with_capacity(text.len());
    let mut copied_to = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'\\' {
            index += 1;
            continue;
        }
        if bytes.get(index + 1) != Some(&b'u') {
            index += 2; // any other escape, including an escaped backslash
            continue;
        }
        let Some(unit) = hex_at(bytes, index + 2) else {
            index += 2;
            continue;
        };
        let escape_len = 6;
        let is_high = (0xD800..0xDC00).contains(&unit);
        let is_low = (0xDC00..0xE000).contains(&unit);
        let pairs_with_next = is_high
            && is_escape_at(bytes, index + escape_len)
            && hex_at(bytes, index + escape_len + 2).is_some_and(|next| (0xDC00..0xE000).contains(&next));
        if pairs_with_next {
            index += 2 * escape_len;
        } else if is_high || is_low {
            output.push_str(&text[copied_to..index]);
            output.push_str("\\uFFFD");
            index += escape_len;
            copied_to = index;
        } else {
            index += escape_len;
        }
    }
    output.push_str(&text[copied_to..]);
    output
}

/// Returns the contact id of a body that could not be normalized, when it
/// is a JSON object with a dsid member (any spelling, such as `dsId`), so
/// that `query contact` still lists the delivery.
pub fn find_dsid(body: &[u8]) -> Option<String> {
    let Ok(Json::Object(object)) = parse_json(body) else {
        return None;
    };
    match read_text(canonical_members(&object).get("dsid")?.1) {
        Value::Text(text) => Some(text),
        _ => None,
    }
}

/// Reads a body of `kind` into its table's values.
pub fn normalize(kind: &Kind, body: &[u8]) -> Result<Row, String> {
    let json = parse_json(body)?;
    match kind.shape {
        Shape::Object => normalize_object(kind, &json),
        Shape::ExceptionAndOriginal => Ok(normalize_failure(&json)),
    }
}

fn normalize_object(kind: &Kind, json: &Json) -> Result<Row, String> {
    let Json::Object(object) = json else {
        return Err(format!("body is JSON but not an object (found {})", json_type(json)));
    };
    let members = canonical_members(object);

    let mut values = Vec::with_capacity(kind.fields.len() + 4);
    let mut dsid = None;
    for field in kind.fields {
        let (field_name, value) = field
            .keys
            .iter()
            .find_map(|key| members.get(*key).copied())
            .unwrap_or((field.keys[0], &Json::Null));
        match field.ty {
            FieldType::Text => values.push(read_text(value)),
            FieldType::Integer => values.push(read_integer(value).map_err(|error| in_field(field_name, error))?),
            FieldType::Bool => values.push(read_bool(value).map_err(|error| in_field(field_name, error))?),
            FieldType::Json => values.push(read_json(value)),
            FieldType::Time { .. } => {
                let (normalized, text) = read_time(value).map_err(|error| in_field(field_name, error))?;
                values.push(normalized);
                values.push(text);
            }
        }
        if field.column == "dsid" {
            if let Value::Text(text) = &values[values.len() - 1] {
                dsid = Some(text.clone());
            }
        }
    }
    // DailyStory's "Test a Webhook" action may send a placeholder with every
    // value empty; kept, but not reported as a real opt-out or bounce.
    if values.iter().all(|value| *value == Value::Null) {
        return Err(format!(
            "no documented field of {} has a value (a \"Test a Webhook\" delivery sends such bodies)",
            kind.slug
        ));
    }
    Ok(Row { values, dsid })
}

/// Reads the "Contact Create or Update Failed" body, whose shape DailyStory
/// does not document: `[exception, original]`, or an object with members
/// whose names contain "exception" (or "error") and "original" (or
/// "object", "contact"). Any other JSON is kept whole as the exception.
fn normalize_failure(json: &Json) -> Row {
    let (exception, original) = match json {
        Json::Array(items) => (items.first().cloned(), items.get(1).cloned()),
        Json::Object(object) => {
            let find = |needles: &[&str]| {
                object
                    .iter()
                    .find(|(key, _)| {
                        let key = canonical_key(key);
                        needles.iter().any(|needle| key.contains(needle))
                    })
                    .map(|(_, value)| value.clone())
            };
            let exception = find(&["exception", "error"]);
            let original = find(&["original", "object", "contact"]);
            if exception.is_none() && original.is_none() {
                (Some(json.clone()), None)
            } else {
                (exception, original)
            }
        }
        other => (Some(other.clone()), None),
    };

    let message = match &exception {
        Some(Json::String(text)) => Some(text.clone()),
        Some(Json::Object(object)) => canonical_members(object)
            .get("message")
            .and_then(|(_, value)| value.as_str())
            .map(str::to_string),
        _ => None,
    };
    let dsid = [original.as_ref(), Some(json)]
        .into_iter()
        .flatten()
        .find_map(|value| match value {
            Json::Object(object) => match read_text(canonical_members(object).get("dsid")?.1) {
                Value::Text(text) => Some(text),
                _ => None,
            },
            _ => None,
        });

    let to_value = |json: Option<Json>| json.map_or(Value::Null, |json| read_json(&json));
    let values = vec![
        dsid.clone().map_or(Value::Null, Value::Text),
        message.map_or(Value::Null, Value::Text),
        to_value(exception),
        to_value(original),
    ];
    Row { values, dsid }
}

/// Maps each member's canonical key to its key as sent and its value. When
/// two keys meet in one canonical key (`dsid` and `dsId`), the first one
/// with a value (not null, not an empty string) wins.
fn canonical_members(object: &serde_json::Map<String, Json>) -> HashMap<String, (&str, &Json)> {
    fn is_empty(value: &Json) -> bool {
        value.is_null() || value.as_str() == Some("")
    }

    let mut members: HashMap<String, (&str, &Json)> = HashMap::with_capacity(object.len());
    for (key, value) in object {
        let entry = members.entry(canonical_key(key)).or_insert((key.as_str(), value));
        if is_empty(entry.1) && !is_empty(value) {
            *entry = (key.as_str(), value);
        }
    }
    members
}

fn in_field(field: &str, error: String) -> String {
    format!("field '{field}': {error}")
}

fn json_type(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn read_text(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::String(text) if text.is_empty() => Value::Null,
        Json::String(text) => Value::Text(text.clone()),
        Json::Bool(flag) => Value::Text(flag.to_string()),
        Json::Number(number) => Value::Text(number.to_string()),
        other => Value::Text(other.to_string()),
    }
}

fn read_json(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        other => Value::Text(other.to_string()),
    }
}

fn read_integer(value: &Json) -> Result<Value, String> {
    // Integers within 2^53 may arrive as floats such as 1042.0.
    const EXACT_FLOAT_LIMIT: f64 = 9_007_199_254_740_992.0;
    match value {
        Json::Null => Ok(Value::Null),
        Json::Number(number) => {
            if let Some(integer) = number.as_i64() {
                Ok(Value::Integer(integer))
            } else if let Some(float) = number.as_f64().filter(|f| f.fract() == 0.0 && f.abs() <= EXACT_FLOAT_LIMIT) {
                Ok(Value::Integer(float as i64))
            } else {
                Err(format!("{number} is not an integer that fits in 64 bits"))
            }
        }
        Json::String(text) if text.trim().is_empty() => Ok(Value::Null),
        Json::String(text) => text
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("'{text}' is not an integer that fits in 64 bits")),
        other => Err(format!("expected an integer, found {}", json_type(other))),
    }
}

fn read_bool(value: &Json) -> Result<Value, String> {
    let flag = match value {
        Json::Null => return Ok(Value::Null),
        Json::Bool(flag) => *flag,
        Json::Number(number) if number.as_f64() == Some(0.0) => false,
        Json::Number(number) if number.as_f64() == Some(1.0) => true,
        Json::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "" => return Ok(Value::Null),
            "true" | "1" | "yes" | "y" => true,
            "false" | "0" | "no" | "n" => false,
            _ => return Err(format!("'{text}' is not a boolean (expected true, false, yes, no, 1 or 0)")),
        },
        other => return Err(format!("expected a boolean, found {}", json_type(other))),
    };
    Ok(Value::Integer(i64::from(flag)))
}

/// Returns the normalized time and the text as received.
fn read_time(value: &Json) -> Result<(Value, Value), String> {
    match value {
        Json::Null => Ok((Value::Null, Value::Null)),
        Json::String(text) if text.trim().is_empty() => Ok((Value::Null, Value::Null)),
        Json::String(text) => {
            let normalized = parse_event_time(text)?;
            Ok((normalized.map_or(Value::Null, |time| Value::Text(format_utc(time))), Value::Text(text.clone())))
        }
        Json::Number(number) => {
            let time = number
                .as_i64()
                .and_then(from_unix_number)
                .ok_or_else(|| format!("{number} is not a Unix time"))?;
            Ok((Value::Text(format_utc(time)), Value::Text(number.to_string())))
        }
        other => Err(format!("expected a date, found {}", json_type(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::by_slug;

    fn column(kind: &Kind, row: &Row, name: &str) -> Value {
        let index = kind.columns().iter().position(|c| *c == name).expect("known column");
        row.values[index].clone()
    }

    fn text(value: &str) -> Value {
        Value::Text(value.to_string())
    }

    #[test]
    fn bounce_with_string_boolean_and_key_case() {
        let kind = by_slug("email-bounced").unwrap();
        let body = br#"{"DSID":"abc","Email":"a@example.com","date":"2026-03-01T14:05:09.517","messageid":"m1","is_spam_complaint":"False","reason":"x","extra":1}"#;
        let row = normalize(kind, body).unwrap();
        assert_eq!(column(kind, &row, "dsid"), text("abc"));
        assert_eq!(column(kind, &row, "is_spam_complaint"), Value::Integer(0));
        assert_eq!(column(kind, &row, "bounced_at"), text("2026-03-01T14:05:09.517Z"));
        assert_eq!(column(kind, &row, "date_text"), text("2026-03-01T14:05:09.517"));
        assert_eq!(row.dsid.as_deref(), Some("abc"));
    }

    #[test]
    fn lead_id_beyond_2_pow_53_is_exact() {
        let kind = by_slug("lead-created").unwrap();
        let row = normalize(kind, br#"{"id":9007199254740993,"dsid":"x"}"#).unwrap();
        assert_eq!(column(kind, &row, "lead_id"), Value::Integer(9_007_199_254_740_993));
        let row = normalize(kind, br#"{"id":"9007199254740995","dsid":"x"}"#).unwrap();
        assert_eq!(column(kind, &row, "lead_id"), Value::Integer(9_007_199_254_740_995));
    }

    #[test]
    fn bom_and_lone_surrogate() {
        let kind = by_slug("text-reply").unwrap();
        let body = b"\xEF\xBB\xBF{\"dsid\":\"d\",\"mobile\":\"555\",\"message\":\"hi \\ud83d and \\\\ud83d \\ud83d\\ude00\"}";
        let row = normalize(kind, body).unwrap();
        assert_eq!(column(kind, &row, "message"), text("hi \u{FFFD} and \\ud83d \u{1F600}"));
    }

    #[test]
    fn invalid_values_name_the_field() {
        let kind = by_slug("lead-created").unwrap();
        let error = normalize(kind, br#"{"id":"abc"}"#).unwrap_err();
        assert!(error.contains("'id'"), "{error}");
        assert!(error.contains("'abc'"), "{error}");
        let error = normalize(kind, b"[1,2]").unwrap_err();
        assert!(error.contains("not an object"), "{error}");
        let error = normalize(kind, b"{not json").unwrap_err();
        assert!(error.starts_with("body is not valid JSON"), "{error}");
    }

    #[test]
    fn failure_body_shapes() {
        let kind = by_slug("contact-update-failed").unwrap();
        let row = normalize(kind, br#"[{"Message":"boom"},{"dsId":"c1"}]"#).unwrap();
        assert_eq!(row.values[0], text("c1"));
        assert_eq!(row.values[1], text("boom"));
        let row = normalize(kind, br#"{"exception":{"message":"bad"},"originalObject":{"email":"a@example.com"}}"#).unwrap();
        assert_eq!(row.values[1], text("bad"));
        assert_eq!(row.values[3], text(r#"{"email":"a@example.com"}"#));
    }
}
