//! Agent counters, rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Exchange outcomes, in the order they are rendered.
const EXCHANGE_OUTCOMES: [&str; 5] = ["ok", "unauthorized", "not_found", "conflict", "error"];

/// Counters of one agent process.
#[derive(Debug, Default)]
pub struct Metrics {
    exchanges: [AtomicU64; 5],
    heartbeats_ok: AtomicU64,
    heartbeats_failed: AtomicU64,
    connected: AtomicU64,
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
        self.exchanges[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one heartbeat.
    pub fn count_heartbeat(&self, ok: bool) {
        let c = if ok {
            &self.heartbeats_ok
        } else {
            &self.heartbeats_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether the last heartbeat succeeded.
    pub fn set_connected(&self, connected: bool) {
        self.connected
            .store(u64::from(connected), Ordering::Relaxed);
    }

    /// Whether the last heartbeat succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed) == 1
    }

    /// Exchanges with outcome `ok`.
    pub fn exchanges_ok(&self) -> u64 {
        self.exchanges[0].load(Ordering::Relaxed)
    }

    /// Successful heartbeats.
    pub fn heartbeats_ok(&self) -> u64 {
        self.heartbeats_ok.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str(
            "# HELP instauth_agent_exchanges_total Instance identity exchanges by outcome.\n",
        );
        out.push_str("# TYPE instauth_agent_exchanges_total counter\n");
        for (name, c) in EXCHANGE_OUTCOMES.iter().zip(&self.exchanges) {
            let _ = writeln!(
                out,
                "instauth_agent_exchanges_total{{outcome=\"{name}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP instauth_agent_heartbeats_total Heartbeats sent by outcome.\n");
        out.push_str("# TYPE instauth_agent_heartbeats_total counter\n");
        let _ = writeln!(
            out,
            "instauth_agent_heartbeats_total{{outcome=\"ok\"}} {}",
            self.heartbeats_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "instauth_agent_heartbeats_total{{outcome=\"error\"}} {}",
            self.heartbeats_failed.load(Ordering::Relaxed)
        );
        out.push_str("# HELP instauth_agent_connected 1 while the last heartbeat succeeded.\n");
        out.push_str("# TYPE instauth_agent_connected gauge\n");
        let _ = writeln!(
            out,
            "instauth_agent_connected {}",
            self.connected.load(Ordering::Relaxed)
        );
        out
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
    }
}
