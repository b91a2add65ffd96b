//! Fetching an unknown issuing CA from the signer certificate's Authority Information Access
//! (`caIssuers`) URL: how a new Azure CA generation keeps working without a release.
//!
//! The URL comes from a certificate nobody has verified yet, so the fetch is fenced in:
//! - only `http`/`https` on port 80 or 443, to a host of [`AIA_HOSTS`] compared exactly with the
//!   parsed host (never by substring: `www.microsoft.com.evil.example` is refused), never an IP
//!   literal, never with credentials; a redirect is followed only to a URL that passes the same
//!   checks, at most [`MAX_AIA_REDIRECTS`] times;
//! - at most [`MAX_AIA_RESPONSE_LEN`] bytes, counted while streaming; [`AIA_TIMEOUT`] for the
//!   whole exchange; at most [`MAX_AIA_FETCHES_PER_MINUTE`] network fetches per fetcher, one at a
//!   time; a failed download is remembered for [`AIA_NEGATIVE_TTL`];
//! - the response must hold a CA certificate (DER, PEM, or a PKCS#7 "certs-only" `.p7c`) whose
//!   subject is the signer's issuer. Whether it chains to a pinned root and issued the signer is
//!   then checked by the verifier itself ([`crate::AzureJob::run`]), on the CPU pool, before it is
//!   admitted.
//!
//! Responses are kept in memory per URL; admitted certificates are also written to an optional
//! [`AiaCache`] (the server's database), so replicas and restarts do not fetch again.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::MissingIssuer;

mod cache;
mod response;
#[cfg(feature = "testing")]
mod testing;
mod url;

pub use cache::{AiaCache, AiaCacheError, BoxFuture, MemoryAiaCache};
use response::ca_certificates;
#[cfg(feature = "testing")]
pub use testing::AiaTestConfig;
#[cfg(feature = "testing")]
use testing::NoDns;
pub(crate) use url::printable;
use url::{check_url, MAX_URL_LEN};

/// The only hosts an issuing CA is fetched from: Microsoft's and DigiCert's certificate
/// download hosts, as Microsoft's "Azure Certificate Authority details" page lists them for AIA.
pub const AIA_HOSTS: &[&str] = &[
    "www.microsoft.com",
    "caissuers.microsoft.com",
    "cacerts.digicert.com",
    "cacerts.digicert.cn",
    "cacerts.geotrust.com",
];
/// The only ports an issuing CA is fetched from.
pub const AIA_PORTS: &[u16] = &[80, 443];
/// Largest response accepted (a certificate is under 3 KiB, a `.p7c` with a few under 8 KiB).
pub const MAX_AIA_RESPONSE_LEN: usize = 16 * 1024;
/// Time allowed for one fetch, from connecting to the last byte.
pub const AIA_TIMEOUT: Duration = Duration::from_secs(5);
/// Network fetches allowed per fetcher per minute (a new generation needs a handful).
pub const MAX_AIA_FETCHES_PER_MINUTE: usize = 10;
/// How long a failed download is remembered before the URL is tried again.
pub const AIA_NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Redirects followed (each re-checked against the host, scheme and port rules).
pub const MAX_AIA_REDIRECTS: usize = 2;
/// Responses kept in memory (oldest dropped first).
const MEMORY_ENTRIES: usize = 64;

/// Why an issuing CA could not be fetched. [`AiaError::is_unavailable`] says which failures
/// are temporary (answer 503 and let the agent retry) rather than a bad proof (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AiaError {
    /// The signer certificate names no `caIssuers` URL.
    #[error("the signer certificate names no caIssuers URL")]
    NoUrl,
    /// The URL may not be fetched (scheme, port, host, IP literal, redirect target).
    #[error("{url} is not fetched: {reason}")]
    Refused {
        /// The URL (at most 512 characters).
        url: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The response is not a usable issuing CA (status, size, content).
    #[error("{url} did not give a usable issuing CA: {reason}")]
    Unusable {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The host could not be reached in time, answered with a server error, or the fetch rate
    /// limit is reached: try again later.
    #[error("{url} cannot be fetched now: {reason}")]
    Unavailable {
        /// The URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the AIA HTTP client: {reason}")]
    Setup {
        /// Why.
        reason: String,
    },
}

impl AiaError {
    /// A temporary failure (unreachable, slow, server error, rate limited): the proof may well
    /// be good, so the API answers 503 with `Retry-After` rather than 401.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AiaError::Unavailable { .. } | AiaError::Setup { .. })
    }
}

/// The candidate issuing CA certificates one URL gave.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedIssuer {
    pub(crate) url: String,
    pub(crate) certificates: Vec<Vec<u8>>,
}

impl fmt::Debug for FetchedIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedIssuer")
            .field("url", &self.url)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

impl FetchedIssuer {
    /// The URL they came from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The candidate certificates (DER), not yet checked against the trust anchors.
    pub fn certificates(&self) -> &[Vec<u8>] {
        &self.certificates
    }
}

/// A poisoned lock only means another thread panicked while holding it; the maps stay usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fetch rules; fixed in production, injectable in tests (feature `testing`).
#[derive(Debug)]
struct Rules {
    hosts: Vec<String>,
    timeout: Duration,
    max_per_minute: usize,
    negative_ttl: Duration,
}

#[derive(Debug, Default)]
struct Memory {
    /// URL → response body of a successful download.
    bodies: HashMap<String, Arc<Vec<u8>>>,
    order: VecDeque<String>,
    /// URL → (until, error) of a failed download.
    failures: HashMap<String, (Instant, AiaError)>,
    /// Start times of the network fetches of the last minute.
    recent: VecDeque<Instant>,
}

/// Fetches issuing CAs from AIA URLs under the rules of the module documentation. Cheap to
/// clone (shared state); keep one per server for its caches and rate limit to mean anything.
#[derive(Debug, Clone)]
pub struct AiaFetcher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    rules: Arc<Rules>,
    persistent: Option<Arc<dyn AiaCache>>,
    memory: Mutex<Memory>,
    /// One network fetch at a time: a burst of proofs for one new CA costs one download.
    network: tokio::sync::Mutex<()>,
    network_fetches: AtomicU64,
}

impl AiaFetcher {
    /// A fetcher with the production rules, and `persistent` as the shared cache.
    pub fn new(persistent: Option<Arc<dyn AiaCache>>) -> Result<Self, AiaError> {
        let rules = Arc::new(Rules {
            hosts: AIA_HOSTS.iter().map(|h| h.to_string()).collect(),
            timeout: AIA_TIMEOUT,
            max_per_minute: MAX_AIA_FETCHES_PER_MINUTE,
            negative_ttl: AIA_NEGATIVE_TTL,
        });
        let client = Self::client_builder(&rules)
            .build()
            .map_err(|e| AiaError::Setup {
                reason: e.to_string(),
            })?;
        Ok(Self::with(client, rules, persistent))
    }

    /// A fetcher with test rules (see [`AiaTestConfig`]).
    #[cfg(feature = "testing")]
    pub fn for_tests(
        config: AiaTestConfig,
        persistent: Option<Arc<dyn AiaCache>>,
    ) -> Result<Self, AiaError> {
        let rules = Arc::new(Rules {
            hosts: config.hosts,
            timeout: config.timeout,
            max_per_minute: config.max_fetches_per_minute,
            negative_ttl: config.negative_ttl,
        });
        let mut builder = Self::client_builder(&rules)
            .no_proxy()
            .dns_resolver(Arc::new(NoDns));
        for (host, addr) in &config.resolve {
            builder = builder.resolve(host, *addr);
        }
        let client = builder.build().map_err(|e| AiaError::Setup {
            reason: e.to_string(),
        })?;
        Ok(Self::with(client, rules, persistent))
    }

    fn client_builder(rules: &Arc<Rules>) -> reqwest::ClientBuilder {
        let redirect_rules = rules.clone();
        reqwest::Client::builder()
            .timeout(rules.timeout)
            .connect_timeout(rules.timeout)
            .user_agent(concat!("instauth/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_AIA_REDIRECTS {
                    return attempt.error(format!("more than {MAX_AIA_REDIRECTS} redirects"));
                }
                match check_url(attempt.url(), &redirect_rules.hosts) {
                    Ok(()) => attempt.follow(),
                    Err(reason) => attempt.error(format!("redirect refused: {reason}")),
                }
            }))
    }

    fn with(
        client: reqwest::Client,
        rules: Arc<Rules>,
        persistent: Option<Arc<dyn AiaCache>>,
    ) -> Self {
        AiaFetcher {
            inner: Arc::new(Inner {
                client,
                rules,
                persistent,
                memory: Mutex::new(Memory::default()),
                network: tokio::sync::Mutex::new(()),
                network_fetches: AtomicU64::new(0),
            }),
        }
    }

    /// How many network fetches this fetcher has started (for metrics and tests).
    pub fn network_fetches(&self) -> u64 {
        self.inner.network_fetches.load(Ordering::Relaxed)
    }

    /// Fetches the issuer of `missing` from its `caIssuers` URLs, first usable one wins. When
    /// all fail, a temporary failure is reported before a refusal, so that a proof that may be
    /// good gets "try again" rather than "invalid".
    pub async fn fetch(&self, missing: &MissingIssuer) -> Result<FetchedIssuer, AiaError> {
        let mut failure: Option<AiaError> = None;
        for url in &missing.ca_issuers {
            match self.fetch_one(url, missing).await {
                Ok(found) => return Ok(found),
                Err(e) => {
                    let keep_previous = failure.as_ref().is_some_and(AiaError::is_unavailable);
                    if !keep_previous {
                        failure = Some(e);
                    }
                }
            }
        }
        Err(failure.unwrap_or(AiaError::NoUrl))
    }

    /// Stores an admitted certificate in the persistent cache. Best effort: a failure only
    /// means the next replica or restart fetches again.
    pub async fn remember(&self, url: &str, der: &[u8]) {
        if let Some(cache) = &self.inner.persistent {
            if let Err(e) = cache.put(url, der).await {
                tracing::warn!(url, error = %e, "Could not store a fetched Azure issuing CA.");
            }
        }
    }

    async fn fetch_one(
        &self,
        url: &str,
        missing: &MissingIssuer,
    ) -> Result<FetchedIssuer, AiaError> {
        let refused = |reason: String| AiaError::Refused {
            url: printable(url),
            reason,
        };
        if url.len() > MAX_URL_LEN {
            return Err(refused(format!("longer than {MAX_URL_LEN} bytes")));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| refused(format!("not a URL: {e}")))?;
        check_url(&parsed, &self.inner.rules.hosts).map_err(refused)?;

        if let Some(found) = self.remembered(url, missing) {
            return found;
        }
        if let Some(cache) = &self.inner.persistent {
            match cache.get(url).await {
                Ok(Some(der)) => {
                    // Checked again: the database is shared, and the certificate must still
                    // be the issuer this proof names (the verifier re-checks the chain).
                    if let Ok(certificates) = ca_certificates(&der, missing) {
                        return Ok(FetchedIssuer {
                            url: url.to_string(),
                            certificates,
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(url, error = %e, "Could not read the Azure issuing CA cache.");
                }
            }
        }

        let _one_at_a_time = self.inner.network.lock().await;
        // Another task may have fetched it while this one waited.
        if let Some(found) = self.remembered(url, missing) {
            return found;
        }
        self.take_rate_token(url)?;
        self.inner.network_fetches.fetch_add(1, Ordering::Relaxed);
        let rules = &self.inner.rules;
        let downloaded = tokio::time::timeout(rules.timeout, self.download(&parsed, url))
            .await
            .unwrap_or_else(|_| {
                Err(AiaError::Unavailable {
                    url: printable(url),
                    reason: format!("no complete answer within {:?}", rules.timeout),
                })
            });
        let mut memory = lock(&self.inner.memory);
        match downloaded {
            Ok(body) => {
                let body = Arc::new(body);
                memory.bodies.insert(url.to_string(), body.clone());
                memory.order.push_back(url.to_string());
                while memory.order.len() > MEMORY_ENTRIES {
                    if let Some(old) = memory.order.pop_front() {
                        memory.bodies.remove(&old);
                    }
                }
                drop(memory);
                tracing::info!(url, "Fetched an Azure issuing CA from its AIA URL.");
                Self::usable(url, &body, missing)
            }
            Err(e) => {
                let now = Instant::now();
                // Expired entries go here, so the map holds at most a TTL's worth of failures.
                memory.failures.retain(|_, (until, _)| *until > now);
                memory
                    .failures
                    .insert(url.to_string(), (now + rules.negative_ttl, e.clone()));
                Err(e)
            }
        }
    }

    /// A remembered response (checked against this proof's issuer) or failure.
    fn remembered(
        &self,
        url: &str,
        missing: &MissingIssuer,
    ) -> Option<Result<FetchedIssuer, AiaError>> {
        let mut memory = lock(&self.inner.memory);
        if let Some(body) = memory.bodies.get(url).cloned() {
            drop(memory);
            return Some(Self::usable(url, &body, missing));
        }
        match memory.failures.get(url) {
            Some((until, e)) if Instant::now() < *until => Some(Err(e.clone())),
            Some(_) => {
                memory.failures.remove(url);
                None
            }
            None => None,
        }
    }

    fn usable(url: &str, body: &[u8], missing: &MissingIssuer) -> Result<FetchedIssuer, AiaError> {
        let certificates = ca_certificates(body, missing).map_err(|reason| AiaError::Unusable {
            url: printable(url),
            reason,
        })?;
        Ok(FetchedIssuer {
            url: url.to_string(),
            certificates,
        })
    }

    fn take_rate_token(&self, url: &str) -> Result<(), AiaError> {
        let mut memory = lock(&self.inner.memory);
        let now = Instant::now();
        while memory
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            memory.recent.pop_front();
        }
        if memory.recent.len() >= self.inner.rules.max_per_minute {
            return Err(AiaError::Unavailable {
                url: printable(url),
                reason: format!(
                    "more than {} issuing CA fetches in the last minute",
                    self.inner.rules.max_per_minute
                ),
            });
        }
        memory.recent.push_back(now);
        Ok(())
    }

    async fn download(&self, parsed: &reqwest::Url, url: &str) -> Result<Vec<u8>, AiaError> {
        let unavailable = |reason: String| AiaError::Unavailable {
            url: printable(url),
            reason,
        };
        let unusable = |reason: String| AiaError::Unusable {
            url: printable(url),
            reason,
        };
        let from_reqwest = |e: reqwest::Error| {
            if e.is_redirect() {
                // The policy's message says which rule the redirect target broke.
                let reason = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "redirect refused".into());
                AiaError::Refused {
                    url: printable(url),
                    reason: printable(&reason),
                }
            } else if e.is_timeout() {
                unavailable("timed out".into())
            } else if e.is_connect() {
                unavailable("cannot connect".into())
            } else {
                unavailable(printable(&e.to_string()))
            }
        };
        let mut response = self
            .inner
            .client
            .get(parsed.clone())
            .send()
            .await
            .map_err(from_reqwest)?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(unusable(format!("HTTP {status}")));
        }
        let too_big = || unusable(format!("response larger than {MAX_AIA_RESPONSE_LEN} bytes"));
        if response
            .content_length()
            .is_some_and(|n| n > MAX_AIA_RESPONSE_LEN as u64)
        {
            return Err(too_big());
        }
        // Counted while streaming: a missing or false Content-Length does not lift the cap.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(from_reqwest)? {
            if body.len() + chunk.len() > MAX_AIA_RESPONSE_LEN {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
