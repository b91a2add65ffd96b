//! Test-only fetch rules and name resolution (feature `testing`).

use std::time::Duration;

use super::{AIA_NEGATIVE_TTL, AIA_TIMEOUT, MAX_AIA_FETCHES_PER_MINUTE};

/// Fetch rules and name resolution for tests: lets a test serve "www.microsoft.com" from
/// 127.0.0.1. Only compiled with the `testing` feature.
#[derive(Debug, Clone)]
pub struct AiaTestConfig {
    /// Allowed hosts (instead of [`AIA_HOSTS`](super::AIA_HOSTS)). Ports stay 80 and 443: a
    /// URL without a port reaches a test server through the port of its `resolve` address.
    pub hosts: Vec<String>,
    /// Host → address overrides; every other name fails to resolve. A URL without a port
    /// connects to the address's port (so `http://www.microsoft.com/x` can reach a test server).
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// Instead of [`AIA_TIMEOUT`].
    pub timeout: Duration,
    /// Instead of [`MAX_AIA_FETCHES_PER_MINUTE`].
    pub max_fetches_per_minute: usize,
    /// Instead of [`AIA_NEGATIVE_TTL`].
    pub negative_ttl: Duration,
}

impl AiaTestConfig {
    /// The production rules, with `hosts` allowed and resolved to `addr`.
    pub fn resolving(hosts: &[&str], addr: std::net::SocketAddr) -> Self {
        AiaTestConfig {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            resolve: hosts.iter().map(|h| (h.to_string(), addr)).collect(),
            timeout: AIA_TIMEOUT,
            max_fetches_per_minute: MAX_AIA_FETCHES_PER_MINUTE,
            negative_ttl: AIA_NEGATIVE_TTL,
        }
    }
}

/// Resolves nothing: in tests, only the overridden names may be reached.
pub(super) struct NoDns;

impl reqwest::dns::Resolve for NoDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move { Err(format!("{name} is not resolvable in tests").into()) })
    }
}
