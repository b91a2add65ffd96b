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
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use const_oid::db::rfc5911::ID_SIGNED_DATA;
use der::{Decode, Encode};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

use crate::chain::MAX_CERTIFICATE_LEN;
use crate::trust::Names;
use crate::MissingIssuer;

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
/// Longest URL considered.
const MAX_URL_LEN: usize = 512;
/// Responses kept in memory (oldest dropped first).
const MEMORY_ENTRIES: usize = 64;
/// Most certificates read from one response.
const MAX_RESPONSE_CERTIFICATES: usize = 4;

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

/// A boxed future, so that [`AiaCache`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A persistent-cache failure; the fetcher then behaves as on a miss.
#[derive(Debug, thiserror::Error)]
#[error("AIA cache: {0}")]
pub struct AiaCacheError(pub Box<dyn std::error::Error + Send + Sync>);

/// Persistent storage of admitted issuing CAs, by URL, shared by replicas and restarts (the
/// server implements it on its database). Only certificates the verifier admitted (they
/// chained to a pinned root and issued a signer) are put; what comes back is checked again.
pub trait AiaCache: Send + Sync + fmt::Debug {
    /// The DER stored for `url`, if any.
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, AiaCacheError>>;
    /// Stores `der` for `url` (replacing what was there).
    fn put<'a>(&'a self, url: &'a str, der: &'a [u8]) -> BoxFuture<'a, Result<(), AiaCacheError>>;
}

/// An [`AiaCache`] in memory, for tests and single-process use.
#[derive(Debug, Default)]
pub struct MemoryAiaCache {
    entries: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryAiaCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The URLs stored, sorted.
    pub fn urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = lock(&self.entries).keys().cloned().collect();
        urls.sort();
        urls
    }
}

impl AiaCache for MemoryAiaCache {
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, AiaCacheError>> {
        let found = lock(&self.entries).get(url).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put<'a>(&'a self, url: &'a str, der: &'a [u8]) -> BoxFuture<'a, Result<(), AiaCacheError>> {
        lock(&self.entries).insert(url.to_string(), der.to_vec());
        Box::pin(async { Ok(()) })
    }
}

/// A poisoned lock only means another thread panicked while holding it; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

/// Fetch rules and name resolution for tests: lets a test serve "www.microsoft.com" from
/// 127.0.0.1. Only compiled with the `testing` feature.
#[cfg(feature = "testing")]
#[derive(Debug, Clone)]
pub struct AiaTestConfig {
    /// Allowed hosts (instead of [`AIA_HOSTS`]).
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

#[cfg(feature = "testing")]
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
#[cfg(feature = "testing")]
struct NoDns;

#[cfg(feature = "testing")]
impl reqwest::dns::Resolve for NoDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move { Err(format!("{name} is not resolvable in tests").into()) })
    }
}

/// Checks a URL against the fetch rules.
fn check_url(url: &reqwest::Url, hosts: &[String]) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "scheme {:?} is not http or https",
                printable(other)
            ))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URL carries credentials".into());
    }
    // `domain()` is None for IP literals (including forms like `0x7f.1` that the URL parser
    // normalises to one): an address is never fetched, only an allow-listed name.
    let Some(host) = url.domain() else {
        return Err("host is an IP address, not an allowed certificate host".into());
    };
    if !hosts.iter().any(|h| h == host) {
        return Err(format!(
            "host {:?} is not an allowed certificate host",
            printable(host)
        ));
    }
    match url.port_or_known_default() {
        Some(p) if AIA_PORTS.contains(&p) => Ok(()),
        Some(p) => Err(format!("port {p} is not 80 or 443")),
        None => Err("no port".into()),
    }
}

/// At most 512 characters, control characters replaced: URLs and names come from unverified
/// certificates and end up in error messages and logs.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .take(MAX_URL_LEN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
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

/// The CA certificates of a response whose subject is the missing issuer: the response is a
/// DER certificate, PEM, or a PKCS#7 certs-only bundle (`.p7c`, RFC 5280 §4.2.2.1).
fn ca_certificates(body: &[u8], missing: &MissingIssuer) -> Result<Vec<Vec<u8>>, String> {
    let ders = if Certificate::from_der(body).is_ok() {
        vec![body.to_vec()]
    } else if body.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(body).map_err(|_| "PEM that is not UTF-8".to_string())?;
        instauth_verify::pem::parse_certificates(text)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|c| c.der)
            .collect()
    } else {
        p7c_certificates(body)?
    };
    if ders.len() > MAX_RESPONSE_CERTIFICATES {
        return Err(format!(
            "{} certificates, at most {MAX_RESPONSE_CERTIFICATES} are read",
            ders.len()
        ));
    }
    let mut found = Vec::new();
    let mut last = "no certificate in the response".to_string();
    for der in ders {
        match issuer_candidate(&der, missing) {
            Ok(()) => found.push(der),
            Err(why) => last = why,
        }
    }
    if found.is_empty() {
        Err(last)
    } else {
        Ok(found)
    }
}

fn issuer_candidate(der: &[u8], missing: &MissingIssuer) -> Result<(), String> {
    if der.len() > MAX_CERTIFICATE_LEN {
        return Err(format!(
            "certificate larger than {MAX_CERTIFICATE_LEN} bytes"
        ));
    }
    let cert = Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let is_ca = cert
        .tbs_certificate
        .get::<BasicConstraints>()
        .ok()
        .flatten()
        .is_some_and(|(_, bc)| bc.ca);
    if !is_ca {
        return Err("not a CA certificate".into());
    }
    let names = Names::of(der, &cert)?;
    let matches_key = match (&missing.issuer_key_id, &names.ski) {
        (Some(aki), Some(ski)) => aki == ski,
        _ => true,
    };
    if names.subject != missing.issuer_name || !matches_key {
        return Err(format!(
            "certificate {} is not the signer's issuer {}",
            printable(&cert.tbs_certificate.subject.to_string()),
            missing.issuer
        ));
    }
    Ok(())
}

fn p7c_certificates(body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let not_p7c = |_| "neither a certificate nor a PKCS#7 certificate bundle".to_string();
    // `.p7c` files are often BER (indefinite lengths); normalise like proofs.
    let info = match ContentInfo::from_der(body) {
        Ok(info) => info,
        Err(_) => {
            let der = instauth_verify::ber::ber_to_der(body)
                .map_err(|_| "neither a certificate nor a PKCS#7 certificate bundle")?;
            ContentInfo::from_der(&der).map_err(not_p7c)?
        }
    };
    if info.content_type != ID_SIGNED_DATA {
        return Err("PKCS#7 content is not signedData".into());
    }
    let signed: SignedData = info.content.decode_as().map_err(not_p7c)?;
    let mut out = Vec::new();
    for choice in signed
        .certificates
        .map(|s| s.0.into_vec())
        .unwrap_or_default()
    {
        if let CertificateChoices::Certificate(c) = choice {
            out.push(c.to_der().map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        AIA_HOSTS.iter().map(|h| h.to_string()).collect()
    }

    fn check(url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        check_url(&parsed, &hosts())
    }

    #[test]
    fn only_allowed_hosts_schemes_and_ports() {
        for ok in [
            "http://www.microsoft.com/pkiops/certs/Microsoft%20TLS%20G2%20RSA%20CA%20OCSP%2002.crt",
            "https://caissuers.microsoft.com/x.crt",
            "http://cacerts.digicert.com:80/DigiCertGlobalRootG2.crt",
            "http://WWW.MICROSOFT.COM/x.crt",
            "https://cacerts.digicert.com:443/x",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://www.microsoft.com.evil.example/x.crt",
            "http://evil.example/www.microsoft.com",
            "http://microsoft.com/x.crt",
            "http://xwww.microsoft.com/x.crt",
            "http://www.microsoft.com./x.crt",
            "http://www.microsoft.com:8080/x.crt",
            "https://www.microsoft.com:80443/x.crt",
            "ftp://www.microsoft.com/x.crt",
            "ldap://www.microsoft.com/x",
            "file:///etc/passwd",
            "http://user:pw@www.microsoft.com/x.crt",
            "http://127.0.0.1/x.crt",
            "http://0x7f.1/x.crt",
            "http://[::1]/x.crt",
            "http://23.0.0.1:80/x.crt",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let u = |reason: &str| AiaError::Unavailable {
            url: "u".into(),
            reason: reason.into(),
        };
        assert!(u("x").is_unavailable());
        assert!(!AiaError::NoUrl.is_unavailable());
        assert!(!AiaError::Refused {
            url: "u".into(),
            reason: "r".into()
        }
        .is_unavailable());
        assert_eq!(printable("a\nb"), "a?b");
    }
}
