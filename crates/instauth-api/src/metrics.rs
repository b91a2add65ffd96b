//! Prometheus metrics (text exposition format 0.0.4).
//!
//! The set is small and fixed (SPEC.md §5), so it is kept here with atomics rather than
//! through a metrics framework: one counter family, one histogram family, and the store's
//! statement counter read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the exchange duration histogram, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's metrics.
#[derive(Default)]
pub struct Metrics {
    exchanges: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    durations: Mutex<BTreeMap<&'static str, Histogram>>,
    audit_dropped: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Counts one exchange and its duration.
    pub fn exchange(&self, provider: &'static str, outcome: &'static str, took: Duration) {
        if let Ok(mut m) = self.exchanges.lock() {
            *m.entry((provider, outcome)).or_default() += 1;
        }
        if let Ok(mut m) = self.durations.lock() {
            let h = m.entry(provider).or_default();
            let secs = took.as_secs_f64();
            for (i, le) in BUCKETS.iter().enumerate() {
                if secs <= *le {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    /// Counts an audit record dropped because the queue was full.
    pub fn audit_dropped(&self) {
        self.audit_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, db_queries: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP instauth_exchanges_total Token exchange attempts by provider and outcome."
        );
        let _ = writeln!(out, "# TYPE instauth_exchanges_total counter");
        if let Ok(m) = self.exchanges.lock() {
            for ((provider, outcome), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "instauth_exchanges_total{{provider=\"{provider}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP instauth_exchange_duration_seconds Time to answer a token exchange."
        );
        let _ = writeln!(out, "# TYPE instauth_exchange_duration_seconds histogram");
        if let Ok(m) = self.durations.lock() {
            for (provider, h) in m.iter() {
                for (i, le) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "instauth_exchange_duration_seconds_bucket{{provider=\"{provider}\",le=\"{le}\"}} {}",
                        h.buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "instauth_exchange_duration_seconds_bucket{{provider=\"{provider}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "instauth_exchange_duration_seconds_sum{{provider=\"{provider}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "instauth_exchange_duration_seconds_count{{provider=\"{provider}\"}} {}",
                    h.count
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP instauth_db_queries_total SQL statements sent to the database."
        );
        let _ = writeln!(out, "# TYPE instauth_db_queries_total counter");
        let _ = writeln!(out, "instauth_db_queries_total {db_queries}");
        let _ = writeln!(
            out,
            "# HELP instauth_audit_dropped_total Audit records dropped because the queue was full."
        );
        let _ = writeln!(out, "# TYPE instauth_audit_dropped_total counter");
        let _ = writeln!(
            out,
            "instauth_audit_dropped_total {}",
            self.audit_dropped.load(Ordering::Relaxed)
        );
        out
    }
}
