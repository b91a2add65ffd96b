//! Google's signing keys: a JWKS from a file or a cached URL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use instauth_verify::pkcs7::RsaPublicKey;
use instauth_verify::Clock;
use serde::Deserialize;

use crate::jwt::GcpError;

/// Unknown `kid`s trigger at most one refetch per this interval (and so does a failed refresh).
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// Freshness assumed when the JWKS response has no `Cache-Control: max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// Longest `max-age` honoured, so a key Google withdraws does not linger for days.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Largest JWKS body accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why keys could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The JWKS file could not be read.
    #[error("cannot read JWKS file {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        reason: String,
    },
    /// The JWKS is not JSON of the expected shape, or holds no usable RSA key.
    #[error("invalid JWKS: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// Fetching the JWKS failed and no earlier set is available.
    #[error("fetching JWKS from {url} failed: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build HTTP client: {reason}")]
    Client {
        /// Why.
        reason: String,
    },
}

/// An RSA signing key of a JWKS, decoded once and prepared for the many tokens it checks
/// ([`RsaPublicKey::prepared`]).
#[derive(Clone)]
pub struct RsaJwk {
    key: RsaPublicKey,
    modulus_bytes: usize,
}

impl std::fmt::Debug for RsaJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaJwk")
            .field("modulus_bytes", &self.modulus_bytes)
            .finish()
    }
}

impl RsaJwk {
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 to 8192 bits: RS256 and nothing else.
    pub(crate) fn verify_rs256(&self, message: &[u8], signature: &[u8]) -> Result<(), ()> {
        self.key.verify(message, signature).map_err(|_| ())
    }
}

#[derive(Deserialize)]
struct JwksJson {
    keys: Vec<JwkJson>,
}

#[derive(Deserialize)]
struct JwkJson {
    #[serde(default)]
    kty: String,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: String,
    #[serde(default)]
    e: String,
}

fn b64url_lenient(s: &str) -> Option<Vec<u8>> {
    // Some publishers pad JWK numbers; the value is the same.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// The RSA signature keys of a JWKS, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct JwkSet {
    keys: HashMap<String, Arc<RsaJwk>>,
}

impl JwkSet {
    /// Parses a JWKS. Keys that are not RSA, not for signatures, or for another `alg` are
    /// skipped; a set with no usable key is an error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, JwksError> {
        let parsed: JwksJson = serde_json::from_slice(bytes).map_err(|e| JwksError::Invalid {
            reason: format!("{:?} error at column {}", e.classify(), e.column()),
        })?;
        let mut keys = HashMap::new();
        for k in parsed.keys {
            let usable = k.kty == "RSA"
                && !k.kid.is_empty()
                && k.alg.as_deref().is_none_or(|a| a == "RS256")
                && k.use_.as_deref().is_none_or(|u| u == "sig");
            if !usable {
                continue;
            }
            let (Some(n), Some(e)) = (b64url_lenient(&k.n), b64url_lenient(&k.e)) else {
                continue;
            };
            // Empty or non-minimal components: a key ring would refuse at every verification.
            let Ok(key) = RsaPublicKey::from_components(&n, &e, "Google JWKS key") else {
                continue;
            };
            keys.entry(k.kid).or_insert_with(|| {
                Arc::new(RsaJwk {
                    key: key.prepared(),
                    modulus_bytes: n.len(),
                })
            });
        }
        if keys.is_empty() {
            return Err(JwksError::Invalid {
                reason: "no RS256 RSA signing key".into(),
            });
        }
        Ok(JwkSet { keys })
    }

    /// Reads a JWKS JSON file.
    pub fn from_file(path: &Path) -> Result<Self, JwksError> {
        let bytes = std::fs::read(path).map_err(|e| JwksError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_json(&bytes)
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<Arc<RsaJwk>> {
        self.keys.get(kid).cloned()
    }

    /// The `kid`s, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

/// Where the keys come from.
#[derive(Debug)]
pub enum JwksSource {
    /// A fixed set (from a file, or tests).
    Static(Arc<JwkSet>),
    /// A URL, fetched and cached.
    Remote(RemoteJwks),
}

impl JwksSource {
    /// The key for `kid`, fetching or refreshing a remote set as needed.
    pub async fn key(&self, kid: &str) -> Result<Arc<RsaJwk>, GcpError> {
        let unknown = || GcpError::UnknownKid {
            kid: kid.chars().take(64).collect(),
        };
        match self {
            JwksSource::Static(set) => set.get(kid).ok_or_else(unknown),
            JwksSource::Remote(remote) => remote.key(kid).await?.ok_or_else(unknown),
        }
    }
}

#[derive(Debug, Default)]
struct CacheState {
    keys: Option<Arc<JwkSet>>,
    fresh_until: Option<DateTime<Utc>>,
    last_attempt: Option<DateTime<Utc>>,
}

/// A JWKS URL with a cache (see the crate documentation for the policy).
#[derive(Debug)]
pub struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    state: RwLock<CacheState>,
    /// Serialises fetches so a burst of unknown `kid`s costs one request.
    fetch: tokio::sync::Mutex<()>,
    min_refetch: chrono::Duration,
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let (k, v) = d.trim().split_once('=')?;
            if k.trim().eq_ignore_ascii_case("max-age") {
                v.trim().trim_matches('"').parse::<u64>().ok()
            } else {
                None
            }
        })
        .next()
        .map_or(DEFAULT_MAX_AGE, |s| Duration::from_secs(s).min(MAX_MAX_AGE))
}

impl RemoteJwks {
    /// A cache of the JWKS at `url`; nothing is fetched until a key is needed.
    pub fn new(url: &str, clock: Arc<dyn Clock>) -> Result<Self, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| JwksError::Client {
                reason: e.to_string(),
            })?;
        Ok(RemoteJwks {
            url: url.to_string(),
            client,
            clock,
            state: RwLock::new(CacheState::default()),
            fetch: tokio::sync::Mutex::new(()),
            min_refetch: chrono::Duration::from_std(MIN_REFETCH_INTERVAL)
                .unwrap_or_else(|_| chrono::Duration::seconds(60)),
        })
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn lookup(&self, kid: &str) -> (Option<Arc<RsaJwk>>, bool, Option<DateTime<Utc>>, bool) {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let fresh = st.fresh_until.is_some_and(|t| now < t);
        let key = st.keys.as_ref().and_then(|k| k.get(kid));
        (key, fresh, st.last_attempt, st.keys.is_some())
    }

    /// The key for `kid`: `Ok(None)` if no set (fresh or last good) has it.
    pub async fn key(&self, kid: &str) -> Result<Option<Arc<RsaJwk>>, JwksError> {
        let (key, fresh, _, _) = self.lookup(kid);
        if fresh && key.is_some() {
            return Ok(key);
        }
        let _guard = self.fetch.lock().await;
        // Another task may have fetched while this one waited.
        let (key, fresh, last_attempt, have_any) = self.lookup(kid);
        if fresh && key.is_some() {
            return Ok(key);
        }
        let now = self.clock.now();
        let may_fetch = last_attempt.is_none_or(|t| now - t >= self.min_refetch);
        if !may_fetch {
            // Rate-limited: serve what there is (stale, last good) or nothing.
            return if have_any {
                Ok(key)
            } else {
                Err(JwksError::Fetch {
                    url: self.url.clone(),
                    reason: "no keys yet and the last attempt failed recently".into(),
                })
            };
        }
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt = Some(now);
        match self.fetch_now().await {
            Ok((set, age)) => {
                let key = set.get(kid);
                let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
                st.keys = Some(Arc::new(set));
                st.fresh_until = chrono::Duration::from_std(age).ok().map(|a| now + a);
                Ok(key)
            }
            // Keep serving the last good set; the failure is retried after the interval.
            Err(_) if have_any => Ok(key),
            Err(e) => Err(e),
        }
    }

    async fn fetch_now(&self) -> Result<(JwkSet, Duration), JwksError> {
        let fail = |reason: String| JwksError::Fetch {
            url: self.url.clone(),
            reason,
        };
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP status {}", resp.status())));
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
        {
            return Err(fail("response too large".into()));
        }
        let age = max_age(resp.headers());
        let body = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(fail("response too large".into()));
        }
        let set = JwkSet::from_json(&body)?;
        Ok((set, age))
    }
}
