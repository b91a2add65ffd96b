//! Dashboard sign-in: server-side sessions behind a random cookie, CSRF tokens, the cross-site
//! checks and the limit on failed sign-ins.
//!
//! The cookie holds a random session id, never the admin token; the server keeps only the id's
//! SHA-256, so looking a session up compares digests, and a memory dump of the map cannot be
//! replayed as a cookie. Sessions live in this process: a server restart signs everyone out, and
//! replicas behind one address need sticky routing for the dashboard (docs/OPERATIONS.md).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::ratelimit::client_key;
use crate::token_hash;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "instauth_ui";
/// Name of the cookie that carries the sign-in form's CSRF token (double submit).
pub const LOGIN_COOKIE: &str = "instauth_ui_login";
/// How long a dashboard session lasts, from sign-in (not extended by use).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long the sign-in form stays valid.
pub const LOGIN_FORM_TTL: Duration = Duration::from_secs(3600);
/// Most sessions at once; signing in when full ends the oldest.
pub const MAX_SESSIONS: usize = 256;
/// Failed sign-ins a client may make in a row before it has to wait.
pub const LOGIN_FAILURE_BURST: f64 = 5.0;
/// One more failed sign-in is allowed every this many seconds.
pub const LOGIN_FAILURE_REFILL_SECS: f64 = 12.0;

/// A random 256-bit value, base64url without padding: session ids and CSRF tokens.
pub(crate) fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::session::random_secret())
}

/// Constant-time equality of two secrets given as text (a length difference is not hidden, and
/// need not be: every token has the same length).
pub(crate) fn secrets_equal(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

struct Session {
    csrf: String,
    expires: Instant,
}

/// The signed-in dashboard sessions of this process.
pub(crate) struct Sessions {
    ttl: Duration,
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

/// A session found by its cookie.
pub(crate) struct SessionRef {
    /// The session's CSRF token, for the forms of the page and for checking POSTs.
    pub csrf: String,
    /// The cookie's value.
    pub id: String,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Self {
        Sessions {
            ttl,
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session: returns its id (the cookie value).
    pub(crate) fn create(&self, now: Instant) -> String {
        let id = random_token();
        let Ok(mut map) = self.by_hash.lock() else {
            return id;
        };
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
        }
        while map.len() >= MAX_SESSIONS {
            // Sessions share one TTL, so the soonest to expire is the oldest.
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            token_hash(&id),
            Session {
                csrf: random_token(),
                expires: now + self.ttl,
            },
        );
        id
    }

    /// The live session with cookie value `id`; an expired one is forgotten.
    pub(crate) fn get(&self, id: &str, now: Instant) -> Option<SessionRef> {
        let key = token_hash(id);
        let mut map = self.by_hash.lock().ok()?;
        match map.get(&key) {
            Some(s) if s.expires > now => Some(SessionRef {
                csrf: s.csrf.clone(),
                id: id.to_owned(),
            }),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session with cookie value `id`.
    pub(crate) fn remove(&self, id: &str) {
        if let Ok(mut map) = self.by_hash.lock() {
            map.remove(&token_hash(id));
        }
    }

    /// Sessions held, live or not yet swept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_hash.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Failed sign-ins per client: a few in a row, then one every [`LOGIN_FAILURE_REFILL_SECS`].
/// Clients are keyed like the exchange's rate limit (IPv6 by /64, the forwarded client behind a
/// trusted proxy). Only failures count, so an operator who signs in often is never slowed down;
/// the check runs before the token is compared, so a limited client learns nothing.
pub(crate) struct LoginLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Failed attempts that may still be made, as of `at`.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn now(self, now: Instant) -> f64 {
        let refill =
            now.saturating_duration_since(self.at).as_secs_f64() / LOGIN_FAILURE_REFILL_SECS;
        (self.tokens + refill).min(LOGIN_FAILURE_BURST)
    }
}

/// Most clients with recent failures tracked at once.
const MAX_LOGIN_CLIENTS: usize = 10_000;

impl LoginLimiter {
    pub(crate) fn new() -> Self {
        LoginLimiter {
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds)` while `ip` has used up its failed attempts.
    pub(crate) fn may_try(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let Ok(buckets) = self.buckets.lock() else {
            return Ok(());
        };
        match buckets.get(&client_key(ip)) {
            Some(b) if b.now(now) < 1.0 => Err(((1.0 - b.now(now)) * LOGIN_FAILURE_REFILL_SECS)
                .ceil()
                .max(1.0) as u64),
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt of `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        let key = client_key(ip);
        if buckets.len() >= MAX_LOGIN_CLIENTS && !buckets.contains_key(&key) {
            // Refilled buckets carry nothing worth keeping; if an address sweep keeps the table
            // full even so, the oldest entries go (the admin token itself is the real defence).
            buckets.retain(|_, b| b.now(now) < LOGIN_FAILURE_BURST);
            if buckets.len() >= MAX_LOGIN_CLIENTS {
                tracing::warn!(
                    clients = buckets.len(),
                    "Failed dashboard sign-ins from too many addresses; forgetting the oldest."
                );
                let mut by_age: Vec<(IpAddr, Instant)> =
                    buckets.iter().map(|(k, b)| (*k, b.at)).collect();
                by_age.sort_by_key(|(_, at)| *at);
                for (k, _) in by_age.into_iter().take(MAX_LOGIN_CLIENTS / 10) {
                    buckets.remove(&k);
                }
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: LOGIN_FAILURE_BURST,
            at: now,
        });
        b.tokens = (b.now(now) - 1.0).max(0.0);
        b.at = now;
    }
}

/// The value of cookie `name` in the request, if sent.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// How the request reached us: whether the browser spoke HTTPS (to us or to a proxy in front),
/// and whether it came from this machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transport {
    /// `X-Forwarded-Proto: https` or `Forwarded: proto=https` was sent.
    pub https: bool,
    /// The client is on this machine (a loopback address; behind a trusted proxy, the forwarded
    /// client's address counts, not the proxy's).
    pub loopback: bool,
}

impl Transport {
    /// `client` is the request's client (the forwarded one behind a trusted proxy).
    pub(crate) fn of(headers: &HeaderMap, client: Option<IpAddr>) -> Self {
        let forwarded_https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
            || headers
                .get(header::FORWARDED)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split([';', ',']).any(|p| {
                        p.trim().split_once('=').is_some_and(|(k, v)| {
                            k.trim().eq_ignore_ascii_case("proto")
                                && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
                        })
                    })
                });
        Transport {
            https: forwarded_https,
            loopback: client.is_some_and(|ip| ip.is_loopback()),
        }
    }

    /// Cookies are `Secure` unless the page is plain HTTP on loopback, where a browser would drop
    /// a `Secure` cookie (an SSH tunnel, a local test). Claiming HTTPS in a header can only add
    /// the attribute, never remove it.
    pub(crate) fn secure_cookies(self) -> bool {
        self.https || !self.loopback
    }
}

/// A `Set-Cookie` value for `name`: HttpOnly, SameSite=Strict, limited to the dashboard's path,
/// `Secure` when [`Transport::secure_cookies`]. `None` for `max_age` clears the cookie.
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    max_age: Option<Duration>,
    transport: Transport,
) -> String {
    let max_age = max_age.map_or(0, |d| d.as_secs());
    let secure = if transport.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// Refuses a POST that a browser marked as coming from another site: `Sec-Fetch-Site` other than
/// `same-origin`, or an `Origin` whose host is not the one the request was sent to. Requests
/// without either header (old browsers, scripts) pass on to the CSRF token check.
///
/// `Origin: null` is what a browser sends for a same-origin form POST from a page whose
/// Referrer-Policy is `no-referrer` (ours), so it passes when `Sec-Fetch-Site: same-origin`
/// (which no page can forge) vouches for the request, and is refused otherwise.
pub(crate) fn check_same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let same_origin_fetch = match headers.get("sec-fetch-site") {
        Some(site) if site.as_bytes() == b"same-origin" => true,
        Some(_) => {
            return Err(ApiError::CrossSite(
                "the browser marked the request as coming from another site",
            ))
        }
        None => false,
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        if origin.as_bytes() == b"null" {
            if !same_origin_fetch {
                return Err(ApiError::CrossSite("the request's Origin is opaque"));
            }
        } else {
            let host = headers.get(header::HOST).map(|h| h.as_bytes());
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, authority)| authority.as_bytes());
            if origin_host.is_none() || origin_host != host {
                return Err(ApiError::CrossSite(
                    "the request's Origin is not this server",
                ));
            }
        }
    }
    Ok(())
}

/// Checks a form's CSRF token against the session's.
pub(crate) fn check_csrf(sent: Option<&str>, expected: &str) -> Result<(), ApiError> {
    match sent {
        Some(sent) if secrets_equal(sent, expected) => Ok(()),
        Some(_) => Err(ApiError::CrossSite("the CSRF token is wrong")),
        None => Err(ApiError::CrossSite("the CSRF token is missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::new(Duration::from_secs(10));
        let t = Instant::now();
        let id = s.create(t);
        let found = s.get(&id, t + Duration::from_secs(9)).expect("live");
        assert_eq!(found.id, id);
        assert_eq!(found.csrf.len(), 43);
        assert!(s.get(&id, t + Duration::from_secs(10)).is_none());
        assert_eq!(s.len(), 0, "an expired session is forgotten");
        let first = s.create(t);
        for i in 1..=MAX_SESSIONS {
            s.create(t + Duration::from_millis(i as u64));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(&first, t).is_none(), "the oldest made room");
        let last = s.create(t);
        s.remove(&last);
        assert!(s.get(&last, t).is_none());
    }

    #[test]
    fn failed_logins_are_limited_per_client() {
        let l = LoginLimiter::new();
        let t = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        for _ in 0..5 {
            assert!(l.may_try(a, t).is_ok());
            l.failed(a, t);
        }
        assert_eq!(l.may_try(same_64, t), Err(12));
        assert!(l.may_try(other, t).is_ok());
        assert!(l.may_try(a, t + Duration::from_secs(12)).is_ok());
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("instauth_ui_login=a; instauth_ui=b"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("b"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("a"));
        assert_eq!(cookie(&h, "other"), None);
    }

    #[test]
    fn cross_site_headers_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:3000"));
        assert!(check_same_origin(&h).is_ok(), "no browser headers");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:3000"),
        );
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check_same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(check_same_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(
            check_same_origin(&h).is_ok(),
            "a same-origin form under no-referrer"
        );
        h.remove("sec-fetch-site");
        assert!(check_same_origin(&h).is_err(), "opaque and nothing vouches");
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_same_origin(&h).is_err());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(check_same_origin(&h).is_err());
    }

    #[test]
    fn csrf_tokens_must_match() {
        assert!(check_csrf(Some("abc"), "abc").is_ok());
        assert!(check_csrf(Some("abd"), "abc").is_err());
        assert!(check_csrf(Some(""), "abc").is_err());
        assert!(check_csrf(None, "abc").is_err());
    }
}
