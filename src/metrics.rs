//! Counters for `GET /metrics`, in the Prometheus text format.
//!
//! Every value is an atomic updated on the request path without a lock, so
//! a scrape under load costs one pass over a few hundred integers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::catalog::KINDS;

/// Outcomes counted per kind.
pub const OUTCOMES: [&str; 4] = ["stored", "quarantined", "unknown_kind", "unavailable"];

/// Upper bounds of the request latency buckets, in seconds.
const LATENCY_BOUNDS: [f64; 13] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Upper bounds of the writer batch size buckets, in deliveries.
const BATCH_BOUNDS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// HTTP statuses counted one by one; others are counted as "other".
const STATUSES: [u16; 15] = [200, 202, 400, 401, 403, 404, 405, 408, 411, 413, 417, 431, 500, 503, 0];

struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for +Inf; not cumulative.
    buckets: Vec<AtomicU64>,
    /// Sum of observed values, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: f64) {
        let index = self.bounds.iter().position(|bound| value <= *bound).unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (index, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[index].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The server's counters.
pub struct Metrics {
    database: PathBuf,
    /// Indexed by kind (KINDS order, then one slot for every unknown slug)
    /// and outcome.
    deliveries: Vec<[AtomicU64; OUTCOMES.len()]>,
    /// Unix milliseconds of the last stored delivery per kind slot, 0 if none.
    last_delivery_ms: Vec<AtomicI64>,
    requests: Vec<AtomicU64>,
    latency: Histogram,
    batch_sizes: Histogram,
}

impl Metrics {
    pub fn new(database: &Path) -> Metrics {
        let slots = KINDS.len() + 1;
        Metrics {
            database: database.to_path_buf(),
            deliveries: (0..slots).map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect(),
            last_delivery_ms: (0..slots).map(|_| AtomicI64::new(0)).collect(),
            requests: STATUSES.iter().map(|_| AtomicU64::new(0)).collect(),
            latency: Histogram::new(&LATENCY_BOUNDS),
            batch_sizes: Histogram::new(&BATCH_BOUNDS),
        }
    }

    fn slot(kind: &str) -> usize {
        KINDS.iter().position(|known| known.slug == kind).unwrap_or(KINDS.len())
    }

    /// Counts one delivery of `kind` with `outcome` (one of `OUTCOMES`),
    /// received at Unix milliseconds `at_ms`.
    pub fn delivery(&self, kind: &str, outcome: &str, at_ms: i64) {
        let slot = Metrics::slot(kind);
        let index = OUTCOMES.iter().position(|known| *known == outcome).unwrap_or(OUTCOMES.len() - 1);
        self.deliveries[slot][index].fetch_add(1, Ordering::Relaxed);
        if outcome != "unavailable" {
            self.last_delivery_ms[slot].fetch_max(at_ms, Ordering::Relaxed);
        }
    }

    /// Sets the last delivery time of `kind` from the database at start.
    pub fn seed_last_delivery(&self, kind: &str, at_ms: i64) {
        self.last_delivery_ms[Metrics::slot(kind)].fetch_max(at_ms, Ordering::Relaxed);
    }

    pub fn request(&self, status: u16, elapsed: Duration) {
        let index = STATUSES.iter().position(|known| *known == status).unwrap_or(STATUSES.len() - 1);
        self.requests[index].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(elapsed.as_secs_f64());
    }

    pub fn batch(&self, size: usize) {
        self.batch_sizes.observe(size as f64);
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let slug = |slot: usize| KINDS.get(slot).map_or("unknown", |kind| kind.slug);

        out.push_str("# HELP dsevents_deliveries_total Deliveries by kind and outcome (unavailable: answered 503, not stored).\n");
        out.push_str("# TYPE dsevents_deliveries_total counter\n");
        for (slot, counts) in self.deliveries.iter().enumerate() {
            for (index, outcome) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "dsevents_deliveries_total{{kind=\"{}\",outcome=\"{outcome}\"}} {}",
                    slug(slot),
                    counts[index].load(Ordering::Relaxed)
                );
            }
        }

        out.push_str("# HELP dsevents_last_delivery_timestamp_seconds Unix time of the last delivery kept per kind; 0 if none.\n");
        out.push_str("# TYPE dsevents_last_delivery_timestamp_seconds gauge\n");
        for (slot, last) in self.last_delivery_ms.iter().enumerate() {
            let seconds = last.load(Ordering::Relaxed) as f64 / 1000.0;
            let _ = writeln!(out, "dsevents_last_delivery_timestamp_seconds{{kind=\"{}\"}} {seconds:.3}", slug(slot));
        }

        out.push_str("# HELP dsevents_http_requests_total HTTP requests answered, by status (0: connection refused at the limit before a request).\n");
        out.push_str("# TYPE dsevents_http_requests_total counter\n");
        for (index, status) in STATUSES.iter().enumerate() {
            let label = if *status == 0 { "other".to_string() } else { status.to_string() };
            let _ = writeln!(out, "dsevents_http_requests_total{{status=\"{label}\"}} {}", self.requests[index].load(Ordering::Relaxed));
        }

        self.latency.render(
            &mut out,
            "dsevents_http_request_duration_seconds",
            "Time from a request's first byte to its answer, including the commit.",
        );
        self.batch_sizes.render(&mut out, "dsevents_writer_batch_size", "Deliveries committed per transaction.");

        let size = |path: &Path| std::fs::metadata(path).map(|metadata| metadata.len()).unwrap_or(0);
        let mut wal = self.database.as_os_str().to_owned();
        wal.push("-wal");
        out.push_str("# HELP dsevents_database_bytes Size of the database file and its WAL.\n");
        out.push_str("# TYPE dsevents_database_bytes gauge\n");
        let _ = writeln!(out, "dsevents_database_bytes{{file=\"db\"}} {}", size(&self.database));
        let _ = writeln!(out, "dsevents_database_bytes{{file=\"wal\"}} {}", size(Path::new(&wal)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let metrics = Metrics::new(Path::new("/nonexistent.db"));
        metrics.batch(1);
        metrics.batch(3);
        metrics.batch(300);
        let text = metrics.render();
        assert!(text.contains("dsevents_writer_batch_size_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("dsevents_writer_batch_size_bucket{le=\"4\"} 2\n"), "{text}");
        assert!(text.contains("dsevents_writer_batch_size_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("dsevents_writer_batch_size_count 3\n"), "{text}");
        assert!(text.contains("dsevents_writer_batch_size_sum 304\n"), "{text}");
    }

    #[test]
    fn unknown_kinds_share_one_label() {
        let metrics = Metrics::new(Path::new("/nonexistent.db"));
        metrics.delivery("made-up-1", "unknown_kind", 1_000);
        metrics.delivery("made-up-2", "unknown_kind", 2_000);
        metrics.delivery("email-bounced", "stored", 3_000);
        let text = metrics.render();
        assert!(text.contains("dsevents_deliveries_total{kind=\"unknown\",outcome=\"unknown_kind\"} 2\n"));
        assert!(text.contains("dsevents_deliveries_total{kind=\"email-bounced\",outcome=\"stored\"} 1\n"));
        assert!(text.contains("dsevents_last_delivery_timestamp_seconds{kind=\"email-bounced\"} 3.000\n"));
    }
}
