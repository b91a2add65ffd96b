//! Agent counters in a `prometheus-client` registry, served in the Prometheus text format.

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

/// `Content-Type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Exchange outcomes, indexed as [`Metrics::count_exchange`] classifies results.
const EXCHANGE_OUTCOMES: [&str; 5] = ["ok", "unauthorized", "not_found", "conflict", "error"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Counters of one agent process. Every series exists from the start (at zero), and each
/// counter is resolved once here, so counting is one atomic add.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    exchanges: [Counter; EXCHANGE_OUTCOMES.len()],
    heartbeats_ok: Counter,
    heartbeats_failed: Counter,
    connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let exchange_family = Family::<Outcome, Counter>::default();
        let heartbeat_family = Family::<Outcome, Counter>::default();
        let connected = Gauge::default();
        let counter = |family: &Family<Outcome, Counter>, outcome| {
            family.get_or_create(&Outcome { outcome }).clone()
        };
        let exchanges = EXCHANGE_OUTCOMES.map(|o| counter(&exchange_family, o));
        let heartbeats_ok = counter(&heartbeat_family, "ok");
        let heartbeats_failed = counter(&heartbeat_family, "error");
        // The registry appends the final period of each help text.
        let mut registry = Registry::default();
        registry.register(
            "instauth_agent_exchanges",
            "Instance identity exchanges by outcome",
            exchange_family,
        );
        registry.register(
            "instauth_agent_heartbeats",
            "Heartbeats sent by outcome",
            heartbeat_family,
        );
        registry.register(
            "instauth_agent_connected",
            "1 while the last heartbeat succeeded",
            connected.clone(),
        );
        Metrics {
            registry,
            exchanges,
            heartbeats_ok,
            heartbeats_failed,
            connected,
        }
    }
}

impl Metrics {
    /// Counts one exchange by outcome.
    pub fn count_exchange<T>(&self, result: &Result<T>) {
        let i = match result {
            Ok(_) => 0,
            Err(Error::Unauthorized { .. }) => 1,
            Err(Error::NotFound { .. }) => 2,
            Err(Error::Conflict { .. }) => 3,
            Err(_) => 4,
        };
        self.exchanges[i].inc();
    }

    /// Counts one heartbeat.
    pub fn count_heartbeat(&self, ok: bool) {
        if ok {
            self.heartbeats_ok.inc();
        } else {
            self.heartbeats_failed.inc();
        }
    }

    /// Records whether the last heartbeat succeeded.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Whether the last heartbeat succeeded.
    pub fn connected(&self) -> bool {
        self.connected.get() == 1
    }

    /// Exchanges with outcome `ok`.
    pub fn exchanges_ok(&self) -> u64 {
        self.exchanges[0].get()
    }

    /// Successful heartbeats.
    pub fn heartbeats_ok(&self) -> u64 {
        self.heartbeats_ok.get()
    }

    /// The Prometheus text exposition of the counters ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        // The encoder fails only when its writer does, and a String never does.
        prometheus_text::encode(&mut out, &self.registry).map_or_else(|_| String::new(), |()| out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.count_exchange::<()>(&Ok(()));
        m.count_exchange::<()>(&Err(Error::Conflict {
            message: String::new(),
            agent_names: vec![],
            retry_after: None,
        }));
        m.count_heartbeat(true);
        m.set_connected(true);
        let text = m.render();
        assert!(text.contains("instauth_agent_exchanges_total{outcome=\"ok\"} 1\n"));
        assert!(text.contains("instauth_agent_exchanges_total{outcome=\"conflict\"} 1\n"));
        assert!(text.contains("instauth_agent_heartbeats_total{outcome=\"ok\"} 1\n"));
        assert!(text.contains("instauth_agent_connected 1\n"));
        // Every outcome is a series from the start.
        assert!(text.contains("instauth_agent_exchanges_total{outcome=\"not_found\"} 0\n"));
        assert!(text.contains("instauth_agent_heartbeats_total{outcome=\"error\"} 0\n"));
        assert!(text.contains(
            "# HELP instauth_agent_exchanges_total Instance identity exchanges by outcome.\n"
        ));
        assert!(text.contains("# TYPE instauth_agent_connected gauge\n"));
        assert!(m.connected());
        assert_eq!((m.exchanges_ok(), m.heartbeats_ok()), (1, 1));
    }
}
