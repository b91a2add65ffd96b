//! Prometheus metrics (SPEC.md §5), kept in a `prometheus-client` registry and served in the
//! Prometheus text format 0.0.4.
//!
//! Series: `instauth_exchanges_total{provider,outcome}`,
//! `instauth_exchange_duration_seconds{provider}` (histogram), `instauth_db_queries_total`
//! (read from the store at scrape time, with `instauth_heartbeat_batches_total` and the session
//! liveness cache's `instauth_session_cache_{hits,misses,invalidations,resets}_total`,
//! `instauth_session_cache_{entries,bytes,active}`), `instauth_heartbeats_total`,
//! `instauth_audit_records_dropped_total` (also under its first name,
//! `instauth_audit_dropped_total`, so existing dashboards keep working) and
//! `instauth_trust_certificate_expiry_timestamp_seconds{provider,subject}`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

use instauth_types::Provider;
use instauth_verify::trust::TrustCertificate;

/// Upper bounds of the exchange duration histogram, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// `Content-Type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeLabels {
    provider: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    provider: &'static str,
    subject: String,
}

/// What the store counts itself, read when scraped rather than mirrored into a second set of
/// counters on every statement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// SQL statements sent (`instauth_db_queries_total`).
    pub queries: u64,
    /// Heartbeat statements, one per group-committed batch.
    pub heartbeat_batches: u64,
    /// The session liveness cache.
    pub cache: instauth_store::CacheStats,
}

impl From<&instauth_store::Store> for StoreCounters {
    fn from(store: &instauth_store::Store) -> Self {
        StoreCounters {
            queries: store.queries_total(),
            heartbeat_batches: store.heartbeat_batches(),
            cache: store.liveness_stats(),
        }
    }
}

struct StoreSeries(Box<dyn Fn() -> StoreCounters + Send + Sync>);

impl std::fmt::Debug for StoreSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSeries")
    }
}

impl Collector for StoreSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let c = (self.0)();
        let counters = [
            ("instauth_db_queries", "SQL statements sent to the database.", c.queries),
            (
                "instauth_heartbeat_batches",
                "Heartbeat statements (one per group-committed batch).",
                c.heartbeat_batches,
            ),
            (
                "instauth_session_cache_hits",
                "Session checks answered from the liveness cache.",
                c.cache.hits,
            ),
            (
                "instauth_session_cache_misses",
                "Session checks that read the database.",
                c.cache.misses,
            ),
            (
                "instauth_session_cache_invalidations",
                "Workspaces whose cached agents were invalidated.",
                c.cache.invalidations,
            ),
            (
                "instauth_session_cache_resets",
                "Times the whole liveness cache was dropped (its database watch lost or restarted).",
                c.cache.resets,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "instauth_session_cache_entries",
                "Agents in the liveness cache.",
                c.cache.entries,
            ),
            (
                "instauth_session_cache_bytes",
                "Bytes held by the liveness cache's tables.",
                c.cache.bytes,
            ),
            (
                "instauth_session_cache_active",
                "1 while the liveness cache is in use (its database watch runs), else 0.",
                u64::from(c.cache.active),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = prometheus_client::metrics::gauge::ConstGauge::new(
                i64::try_from(value).unwrap_or(i64::MAX),
            );
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// The server's metrics. An exchange touches the counter family (read-locked, write-locked
/// only the first time a provider and outcome meet) and its provider's histogram, resolved
/// once here and indexed by the provider, under the histogram's own lock.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    exchanges: Family<ExchangeLabels, Counter>,
    /// One per [`Provider`], in [`Provider::ALL`] order.
    durations: [Histogram; Provider::ALL.len()],
    heartbeats: Counter,
    audit_dropped: Counter,
    certificate_expiry: Family<CertificateLabels, Gauge>,
}

impl Metrics {
    /// Registers every series; `store` returns the store's own counters when scraped.
    pub fn new(store: impl Fn() -> StoreCounters + Send + Sync + 'static) -> Self {
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        let duration_family = Family::<ProviderLabel, Histogram, _>::new_with_constructor(
            (|| Histogram::new(BUCKETS)) as fn() -> Histogram,
        );
        let durations = std::array::from_fn(|i| {
            let provider = Provider::ALL[i].as_str();
            duration_family
                .get_or_create(&ProviderLabel { provider })
                .clone()
        });
        let heartbeats = Counter::default();
        let audit_dropped = Counter::default();
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        // The registry appends the final period of each help text.
        let mut registry = Registry::default();
        registry.register(
            "instauth_exchanges",
            "Token exchange attempts by provider and outcome",
            exchanges.clone(),
        );
        registry.register(
            "instauth_exchange_duration_seconds",
            "Time to answer a token exchange",
            duration_family,
        );
        registry.register_collector(Box::new(StoreSeries(Box::new(store))));
        registry.register(
            "instauth_heartbeats",
            "Agent heartbeats accepted",
            heartbeats.clone(),
        );
        registry.register(
            "instauth_audit_records_dropped",
            "Audit records dropped because the queue was full",
            audit_dropped.clone(),
        );
        registry.register(
            "instauth_audit_dropped",
            "Audit records dropped because the queue was full",
            audit_dropped.clone(),
        );
        registry.register(
            "instauth_trust_certificate_expiry_timestamp_seconds",
            "When each trusted certificate expires (notAfter, Unix time)",
            certificate_expiry.clone(),
        );
        Metrics {
            registry,
            exchanges,
            durations,
            heartbeats,
            audit_dropped,
            certificate_expiry,
        }
    }

    /// Counts one exchange and its duration.
    pub fn exchange(&self, provider: Provider, outcome: &'static str, took: Duration) {
        self.exchanges
            .get_or_create(&ExchangeLabels {
                provider: provider.as_str(),
                outcome,
            })
            .inc();
        // `ALL` lists the variants in declaration order, which is their discriminant order.
        self.durations[provider as usize].observe(took.as_secs_f64());
    }

    /// Counts one accepted heartbeat.
    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    /// Counts an audit record dropped because the queue was full.
    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// Records when a trusted certificate of `provider` expires (its notAfter, Unix seconds).
    pub fn set_trust_certificate_expiry(&self, provider: Provider, subject: &str, not_after: i64) {
        self.certificate_expiry
            .get_or_create(&CertificateLabels {
                provider: provider.as_str(),
                subject: subject.to_owned(),
            })
            .set(not_after);
    }

    /// Replaces the expiry gauge with the certificates of `certs` whose expiry matters: those
    /// whose validity verification checks (not AWS region certificates, used for their key
    /// only) and that are valid at `now` (an expired generation is kept only to check old
    /// proofs with `--at`, and would keep an expiry alert firing for ever). Certificates sharing
    /// a subject (a CA and its cross-signed twin) are one series: the latest notAfter, when
    /// that CA stops being usable.
    pub fn set_trust_certificates(
        &self,
        certs: &[TrustCertificate],
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let mut latest = std::collections::BTreeMap::new();
        for c in certs
            .iter()
            .filter(|c| c.expiry_checked && c.is_valid_at(now))
        {
            let at = c.not_after.timestamp();
            let entry = latest.entry((c.provider, c.subject.as_str())).or_insert(at);
            *entry = (*entry).max(at);
        }
        // A certificate dropped by a reload must not linger as a series.
        self.certificate_expiry.clear();
        for ((provider, subject), not_after) in latest {
            self.set_trust_certificate_expiry(provider, subject, not_after);
        }
    }

    /// The exposition text ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; a failure would be an encoder bug, and a partial
        // page is more useful to an operator than none.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "Encoding the metrics failed.");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_in_the_prometheus_text_format() {
        let m = Metrics::new(|| StoreCounters {
            queries: 7,
            heartbeat_batches: 3,
            cache: instauth_store::CacheStats {
                hits: 5,
                active: true,
                ..Default::default()
            },
        });
        m.exchange(Provider::Aws, "ok", Duration::from_millis(3));
        m.exchange(Provider::Aws, "ok", Duration::from_secs(5));
        m.exchange(Provider::Gcp, "conflict", Duration::from_micros(100));
        m.heartbeat();
        m.audit_dropped();
        m.set_trust_certificate_expiry(Provider::Azure, "CN=Root \"R1\"", 1_900_000_000);
        let text = m.render();
        for line in [
            "# HELP instauth_exchanges_total Token exchange attempts by provider and outcome.",
            "# TYPE instauth_exchanges_total counter",
            "instauth_exchanges_total{provider=\"aws\",outcome=\"ok\"} 2",
            "instauth_exchanges_total{provider=\"gcp\",outcome=\"conflict\"} 1",
            "# HELP instauth_exchange_duration_seconds Time to answer a token exchange.",
            "# TYPE instauth_exchange_duration_seconds histogram",
            "instauth_exchange_duration_seconds_bucket{provider=\"aws\",le=\"0.0025\"} 0",
            "instauth_exchange_duration_seconds_bucket{provider=\"aws\",le=\"0.005\"} 1",
            "instauth_exchange_duration_seconds_bucket{provider=\"aws\",le=\"2.5\"} 1",
            "instauth_exchange_duration_seconds_bucket{provider=\"aws\",le=\"+Inf\"} 2",
            "instauth_exchange_duration_seconds_sum{provider=\"aws\"} 5.003",
            "instauth_exchange_duration_seconds_count{provider=\"aws\"} 2",
            "instauth_exchange_duration_seconds_bucket{provider=\"gcp\",le=\"0.0005\"} 1",
            "instauth_exchange_duration_seconds_count{provider=\"azure\"} 0",
            "# HELP instauth_db_queries_total SQL statements sent to the database.",
            "# TYPE instauth_db_queries_total counter",
            "instauth_db_queries_total 7",
            "instauth_heartbeat_batches_total 3",
            "instauth_session_cache_hits_total 5",
            "# TYPE instauth_session_cache_active gauge",
            "instauth_session_cache_active 1",
            "# TYPE instauth_heartbeats_total counter",
            "instauth_heartbeats_total 1",
            "# TYPE instauth_audit_records_dropped_total counter",
            "instauth_audit_records_dropped_total 1",
            "# HELP instauth_audit_dropped_total Audit records dropped because the queue was full.",
            "# TYPE instauth_audit_dropped_total counter",
            "instauth_audit_dropped_total 1",
            "# TYPE instauth_trust_certificate_expiry_timestamp_seconds gauge",
            "instauth_trust_certificate_expiry_timestamp_seconds{provider=\"azure\",subject=\"CN=Root \\\"R1\\\"\"} 1900000000",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        // Whole-number bucket bounds are written as Go clients write them (`le="1"`).
        assert!(text.contains("le=\"1\"}"), "{text}");
    }

    #[test]
    fn series_never_observed_are_absent_and_the_rest_start_at_zero() {
        let text = Metrics::new(StoreCounters::default).render();
        assert!(!text.contains("instauth_exchanges_total{"), "{text}");
        for p in Provider::ALL {
            let count = format!("instauth_exchange_duration_seconds_count{{provider=\"{p}\"}} 0");
            assert!(text.lines().any(|l| l == count), "{text}");
        }
        assert!(text.lines().any(|l| l == "instauth_heartbeats_total 0"));
        assert!(text
            .lines()
            .any(|l| l == "instauth_audit_records_dropped_total 0"));
    }
}
