//! Reading the many time forms DailyStory sends, and the `--since`,
//! `--until` and duration options; writing ISO-8601 UTC text.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// Formats a time the way every table stores it: `2026-03-01T14:05:09.517Z`.
pub fn format_utc(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Returns the current time as stored text.
pub fn now_text() -> String {
    format_utc(Utc::now())
}

/// Reads an event time from a body.
///
/// Accepts ISO-8601 with or without zone and fraction (no zone is read as
/// UTC), a date alone, the .NET `/Date(ms)/` form with an optional offset
/// suffix, and Unix seconds or milliseconds. Returns `Ok(None)` for the
/// "no date" values of SQL Server (`1753-01-01`) and .NET (`0001-01-01`).
pub fn parse_event_time(text: &str) -> Result<Option<DateTime<Utc>>, String> {
    let trimmed = text.trim();
    let time = if let Some(inner) = trimmed.strip_prefix("/Date(").and_then(|s| s.strip_suffix(")/")) {
        // The optional +hhmm suffix only names the zone the sender was in,
        // because the milliseconds are already UTC.
        let digits_end = inner
            .char_indices()
            .skip(1)
            .find(|(_, c)| *c == '+' || *c == '-')
            .map_or(inner.len(), |(index, _)| index);
        let millis: i64 = inner[..digits_end]
            .parse()
            .map_err(|_| format!("'{text}' is not a valid /Date(milliseconds)/ value"))?;
        Utc.timestamp_millis_opt(millis)
            .single()
            .ok_or_else(|| format!("'{text}' is out of the supported date range"))?
    } else if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let number: i64 = trimmed
            .parse()
            .map_err(|_| format!("'{text}' is too large to be a Unix time"))?;
        from_unix_number(number).ok_or_else(|| format!("'{text}' is out of the supported date range"))?
    } else {
        parse_iso(trimmed).ok_or_else(|| {
            format!("'{text}' is not a date (expected ISO-8601 such as 2026-03-01T14:05:09Z, or /Date(ms)/)")
        })?
    };

    if is_no_date(time) {
        return Ok(None);
    }
    Ok(Some(time))
}

/// Reads a JSON number as Unix seconds, or milliseconds when it is too
/// large to be seconds before the year 5000.
pub fn from_unix_number(number: i64) -> Option<DateTime<Utc>> {
    const MAX_SECONDS: i64 = 95_617_584_000; // 5000-01-01
    // unsigned_abs, because abs() overflows on i64::MIN.
    if number.unsigned_abs() < MAX_SECONDS.unsigned_abs() {
        Utc.timestamp_opt(number, 0).single()
    } else {
        Utc.timestamp_millis_opt(number).single()
    }
}

fn parse_iso(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    // RFC 3339 requires the T; SQL Server and people often write a space.
    let with_t = text.replacen(' ', "T", 1);
    if let Ok(time) = DateTime::parse_from_rfc3339(&with_t) {
        return Some(time.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(&with_t, format) {
            return Some(naive.and_utc());
        }
    }
    // An offset without a colon, such as +0100.
    if let Ok(time) = DateTime::parse_from_str(&with_t, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|date| date.and_hms_opt(0, 0, 0).expect("midnight is a valid time").and_utc())
}

fn is_no_date(time: DateTime<Utc>) -> bool {
    let no_dates = [
        NaiveDate::from_ymd_opt(1753, 1, 1).expect("valid date"),
        NaiveDate::from_ymd_opt(1, 1, 1).expect("valid date"),
        NaiveDate::from_ymd_opt(1900, 1, 1).expect("valid date"),
    ];
    no_dates.contains(&time.date_naive()) && time.time() == chrono::NaiveTime::MIN
}

/// Reads a duration such as `90d`, `24h`, `30m`, `45s` or `2w`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let amount: i64 = digits
        .parse()
        .map_err(|_| format!("invalid duration '{text}': expected a number and a unit, such as 7d, 24h or 30m"))?;
    let duration = match unit {
        "s" => Duration::try_seconds(amount),
        "m" | "min" => Duration::try_minutes(amount),
        "h" => Duration::try_hours(amount),
        "d" => Duration::try_days(amount),
        "w" => Duration::try_weeks(amount),
        _ => {
            return Err(format!(
                "invalid duration '{text}': unit must be s, m, h, d or w, such as 7d, 24h or 30m"
            ))
        }
    };
    // Capped so that subtracting a duration from any time of this century
    // stays within chrono's range.
    let max = Duration::days(MAX_DURATION_DAYS);
    duration
        .filter(|duration| *duration <= max)
        .ok_or_else(|| format!("invalid duration '{text}': more than {MAX_DURATION_DAYS} days (100 years)"))
}

/// Maximum duration accepted anywhere: 100 years.
const MAX_DURATION_DAYS: i64 = 36_525;

/// Reads a `--since` or `--until` value: a duration back from `now` (`7d`),
/// a date (`2026-03-01`, midnight UTC) or a timestamp.
pub fn parse_point(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(duration) = parse_duration(text) {
        return Ok(now - duration);
    }
    parse_iso(text.trim()).ok_or_else(|| {
        format!(
            "invalid time '{text}': expected a date (2026-03-01), a timestamp \
             (2026-03-01T14:05:00Z) or a duration back from now (7d, 24h, 30m)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(text: &str) -> Option<String> {
        parse_event_time(text).unwrap().map(format_utc)
    }

    #[test]
    fn event_time_forms() {
        let cases = [
            ("2026-03-01T14:05:09", "2026-03-01T14:05:09.000Z"),
            ("2026-03-01T14:05:09.517", "2026-03-01T14:05:09.517Z"),
            ("2026-03-01T14:05:09.5170000", "2026-03-01T14:05:09.517Z"),
            ("2026-03-01T14:05:09Z", "2026-03-01T14:05:09.000Z"),
            ("2026-03-01T14:05:09+00:00", "2026-03-01T14:05:09.000Z"),
            ("2026-03-01T16:05:09+02:00", "2026-03-01T14:05:09.000Z"),
            ("2026-03-01 14:05:09", "2026-03-01T14:05:09.000Z"),
            ("2026-03-01T14:05:09-0500", "2026-03-01T19:05:09.000Z"),
            ("2026-03-01", "2026-03-01T00:00:00.000Z"),
            ("/Date(1767225600000)/", "2026-01-01T00:00:00.000Z"),
            ("/Date(1767225600000+0100)/", "2026-01-01T00:00:00.000Z"),
            ("1767225600", "2026-01-01T00:00:00.000Z"),
            ("1767225600000", "2026-01-01T00:00:00.000Z"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalized(input).as_deref(), Some(expected), "input {input}");
        }
    }

    #[test]
    fn no_date_sentinels_are_none() {
        assert_eq!(normalized("1753-01-01T00:00:00"), None);
        assert_eq!(normalized("0001-01-01T00:00:00"), None);
    }

    #[test]
    fn invalid_event_time_is_error() {
        let error = parse_event_time("31/02/2026").unwrap_err();
        assert!(error.contains("'31/02/2026'"), "{error}");
    }

    #[test]
    fn durations_and_points() {
        let now = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
        assert_eq!(parse_point("7d", now).unwrap(), Utc.with_ymd_and_hms(2026, 3, 3, 12, 0, 0).unwrap());
        assert_eq!(parse_point("2026-03-01", now).unwrap(), Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap());
        assert!(parse_point("last tuesday", now).unwrap_err().contains("'last tuesday'"));
        assert!(parse_duration("5y").unwrap_err().contains("unit must be"));
    }
}
