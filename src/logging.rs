//! Logging setup (`log` with `env_logger`), in text or JSON lines, and a
//! throttle that counts repeats of one error instead of flooding the log.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::ValueEnum;

/// Log line format for `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message`
    Text,
    /// One JSON object per line: time, level, target, message.
    Json,
}

/// Starts logging to stderr at `info`, or at the level `RUST_LOG` sets.
pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|out, record| {
            let line = serde_json::json!({
                "time": crate::time::now_text(),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(out, "{line}")
        });
    }
    builder.init();
}

/// How long repeats of one error are counted before it is logged again.
const REPEAT_INTERVAL: Duration = Duration::from_secs(60);
/// Distinct errors remembered; beyond this the oldest are forgotten.
const MAX_KEYS: usize = 1000;

struct Seen {
    logged_at: Instant,
    suppressed: u64,
}

/// Logs an error the first time, then at most once per `REPEAT_INTERVAL`
/// with the number of repeats left out in between.
#[derive(Default)]
pub struct Throttle {
    seen: Mutex<HashMap<String, Seen>>,
}

impl Throttle {
    /// Logs `message` at error level unless the same `key` was logged within
    /// the interval, in which case it is only counted.
    pub fn error(&self, key: &str, message: &str) {
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        if let Some(entry) = seen.get_mut(key) {
            if now.duration_since(entry.logged_at) < REPEAT_INTERVAL {
                entry.suppressed += 1;
                return;
            }
            let repeats = std::mem::take(&mut entry.suppressed);
            entry.logged_at = now;
            if repeats > 0 {
                log::error!("{message} (and {repeats} more times in the last {} s)", REPEAT_INTERVAL.as_secs());
            } else {
                log::error!("{message}");
            }
            return;
        }
        if seen.len() >= MAX_KEYS {
            if let Some(oldest) = seen.iter().min_by_key(|(_, entry)| entry.logged_at).map(|(key, _)| key.clone()) {
                seen.remove(&oldest);
            }
        }
        seen.insert(key.to_string(), Seen { logged_at: now, suppressed: 0 });
        log::error!("{message}");
    }

    /// Returns how many repeats of `key` were left out since it was last logged.
    pub fn suppressed(&self, key: &str) -> u64 {
        let seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        seen.get(key).map_or(0, |entry| entry.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_not_logged() {
        let throttle = Throttle::default();
        throttle.error("disk full", "write failed: disk full");
        throttle.error("disk full", "write failed: disk full");
        throttle.error("disk full", "write failed: disk full");
        throttle.error("other", "something else");
        assert_eq!(throttle.suppressed("disk full"), 2);
        assert_eq!(throttle.suppressed("other"), 0);
    }
}
