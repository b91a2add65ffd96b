//! RS256 JWT parsing and checks, algorithm pinned.

use base64::Engine;
use chrono::{DateTime, Utc};
use instauth_verify::{Identity, Verified};
use serde::Deserialize;

use crate::jwks::{JwksError, RsaJwk};
use crate::ISSUERS;

/// Clock skew tolerated on `exp`, `iat` and `nbf`.
pub const LEEWAY_SECONDS: i64 = 60;

/// Tokens longer than this are refused unparsed; Google's are about 1 KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a Google identity token was rejected. No variant carries the token or its signature.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcpError {
    /// `json_web_token` is empty.
    #[error("no proof: `json_web_token` is empty")]
    MissingProof,
    /// Not a compact JWS with base64url JSON parts.
    #[error("malformed JWT: {reason}")]
    Malformed {
        /// Which part is wrong.
        reason: String,
    },
    /// `alg` is not `RS256` (e.g. `none`, `HS256`).
    #[error("JWT algorithm {alg:?} is not accepted, only RS256")]
    UnsupportedAlgorithm {
        /// The `alg` header (at most 16 characters of it).
        alg: String,
    },
    /// The header has no `kid`.
    #[error("JWT header has no kid")]
    MissingKid,
    /// The JWKS has no key with that `kid`, even after a refresh.
    #[error("no Google key with kid {kid:?}")]
    UnknownKid {
        /// The `kid` (at most 64 characters of it).
        kid: String,
    },
    /// The keys could not be obtained.
    #[error("Google keys unavailable: {0}")]
    Jwks(#[from] JwksError),
    /// The signature does not verify with the key.
    #[error("JWT signature does not verify with Google key {kid:?}")]
    BadSignature {
        /// The key used.
        kid: String,
    },
    /// `iss` is not Google.
    #[error("JWT issuer is {actual:?}, expected one of {expected:?}")]
    WrongIssuer {
        /// Accepted issuers.
        expected: &'static [&'static str],
        /// The token's `iss` (at most 64 characters).
        actual: String,
    },
    /// `aud` is not the configured audience.
    #[error("JWT audience is {actual:?}, expected {expected:?}")]
    WrongAudience {
        /// The configured audience.
        expected: String,
        /// The token's `aud` (at most 128 characters).
        actual: String,
    },
    /// `exp` has passed (beyond the leeway).
    #[error("JWT expired: now {now}, exp {exp}")]
    Expired {
        /// The verification time.
        now: DateTime<Utc>,
        /// The token's `exp`.
        exp: DateTime<Utc>,
    },
    /// `iat` or `nbf` is in the future (beyond the leeway).
    #[error("JWT not yet valid: now {now}, valid from {valid_from}")]
    NotYetValid {
        /// The verification time.
        now: DateTime<Utc>,
        /// The token's `iat` or `nbf`.
        valid_from: DateTime<Utc>,
    },
    /// The token is not a Compute Engine identity (`format=full`) token.
    #[error("JWT lacks google.compute_engine claims (request the token with format=full)")]
    NotComputeEngine,
}

impl GcpError {
    /// A temporary failure: Google's keys could not be fetched (unreachable, error status,
    /// unusable answer) and none are cached, so the proof may be good; the API answers 503
    /// with `Retry-After` rather than 401. Only a remote JWKS fails this way (a JWKS file is
    /// read when the verifier is built).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, GcpError::Jwks(_))
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn b64url(part: &str, what: &str) -> Result<Vec<u8>, GcpError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| GcpError::Malformed {
            reason: format!("{what} is not base64url"),
        })
}

fn json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, GcpError> {
    serde_json::from_slice(bytes).map_err(|e| GcpError::Malformed {
        // serde_json's messages may quote values; keep only class and position.
        reason: format!("{what}: {:?} error at column {}", e.classify(), e.column()),
    })
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The parts of a compact JWS, as offsets into its text, with the header checked.
struct Parts {
    /// `header.payload`: the bytes the signature covers.
    signing_input_len: usize,
    /// Where the base64url payload is.
    payload: std::ops::Range<usize>,
    signature: Vec<u8>,
    kid: String,
}

impl Parts {
    /// Splits a compact JWS and checks its header: `alg` must be `RS256`, `kid` present, no
    /// `crit` extensions.
    fn parse(token: &str) -> Result<Self, GcpError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(GcpError::Malformed {
                reason: format!("longer than {MAX_TOKEN_LEN} bytes"),
            });
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(GcpError::Malformed {
                reason: "not three dot-separated parts".into(),
            });
        };
        let header_bytes = b64url(header_b64, "header")?;
        let header: Header = json(&header_bytes, "header")?;
        if header.alg != "RS256" {
            return Err(GcpError::UnsupportedAlgorithm {
                alg: truncate(&header.alg, 16),
            });
        }
        if header.crit.is_some() {
            return Err(GcpError::Malformed {
                reason: "critical header extensions are not supported".into(),
            });
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or(GcpError::MissingKid)?;
        let signature = b64url(sig_b64, "signature")?;
        let payload_start = header_b64.len() + 1;
        let signing_input_len = payload_start + payload_b64.len();
        Ok(Parts {
            signing_input_len,
            payload: payload_start..signing_input_len,
            signature,
            kid,
        })
    }

    /// Checks the RS256 signature over `token` (the text these parts were read from) with
    /// `key`, then parses the claims.
    fn verify_signature(self, token: &str, key: &RsaJwk) -> Result<SignedClaims, GcpError> {
        let bad_boundaries = || GcpError::Malformed {
            reason: "bad part boundaries".into(),
        };
        let signing_input = token
            .get(..self.signing_input_len)
            .ok_or_else(bad_boundaries)?;
        let payload_b64 = token.get(self.payload.clone()).ok_or_else(bad_boundaries)?;
        key.verify_rs256(signing_input.as_bytes(), &self.signature)
            .map_err(|()| GcpError::BadSignature {
                kid: truncate(&self.kid, 64),
            })?;
        let payload = b64url(payload_b64, "payload")?;
        let claims: Claims = json(&payload, "claims")?;
        Ok(SignedClaims { claims })
    }
}

/// A JWT split and its header read, signature NOT yet checked. Its `Debug` shows the `kid`
/// only.
pub struct UnverifiedJwt<'t> {
    token: &'t str,
    parts: Parts,
}

impl std::fmt::Debug for UnverifiedJwt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnverifiedJwt")
            .field("kid", &self.parts.kid)
            .finish_non_exhaustive()
    }
}

impl<'t> UnverifiedJwt<'t> {
    /// Splits a compact JWS and checks its header: `alg` must be `RS256`, `kid` present, no
    /// `crit` extensions.
    pub fn parse(token: &'t str) -> Result<Self, GcpError> {
        Ok(UnverifiedJwt {
            parts: Parts::parse(token)?,
            token,
        })
    }

    /// The `kid` header.
    pub fn kid(&self) -> &str {
        &self.parts.kid
    }

    /// Checks the RS256 signature with `key`, then parses the claims.
    pub fn verify_signature(self, key: &RsaJwk) -> Result<SignedClaims, GcpError> {
        self.parts.verify_signature(self.token, key)
    }
}

/// [`UnverifiedJwt`] owning its text, so that it can be sent to another thread (the server
/// checks signatures on a blocking pool). Its `Debug` shows the `kid` only.
pub struct OwnedJwt {
    token: String,
    parts: Parts,
}

impl std::fmt::Debug for OwnedJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedJwt")
            .field("kid", &self.parts.kid)
            .finish_non_exhaustive()
    }
}

impl OwnedJwt {
    /// As [`UnverifiedJwt::parse`], keeping `token`.
    pub fn parse(token: String) -> Result<Self, GcpError> {
        let parts = Parts::parse(&token)?;
        Ok(OwnedJwt { token, parts })
    }

    /// The `kid` header.
    pub fn kid(&self) -> &str {
        &self.parts.kid
    }

    /// Checks the RS256 signature with `key`, then parses the claims.
    pub fn verify_signature(self, key: &RsaJwk) -> Result<SignedClaims, GcpError> {
        self.parts.verify_signature(&self.token, key)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    aud: Audience,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    google: Option<GoogleClaims>,
}

#[derive(Deserialize)]
struct GoogleClaims {
    #[serde(default)]
    compute_engine: Option<ComputeEngine>,
}

#[derive(Deserialize)]
struct ComputeEngine {
    instance_id: String,
    project_id: String,
    zone: String,
}

/// Claims whose signature verified; time, issuer and audience not yet checked.
pub struct SignedClaims {
    claims: Claims,
}

impl std::fmt::Debug for SignedClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignedClaims")
    }
}

fn ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

impl SignedClaims {
    /// Checks `iss`, `aud`, `exp`, `iat`, `nbf` at `now`, and returns the identity.
    pub fn check(self, audience: &str, now: DateTime<Utc>) -> Result<Verified<Identity>, GcpError> {
        let c = self.claims;
        if !ISSUERS.contains(&c.iss.as_str()) {
            return Err(GcpError::WrongIssuer {
                expected: ISSUERS,
                actual: truncate(&c.iss, 64),
            });
        }
        let aud_ok = match &c.aud {
            Audience::One(a) => a == audience,
            // "Exact": a list is accepted only if it is just the audience.
            Audience::Many(list) => list.len() == 1 && list.iter().all(|a| a == audience),
        };
        if !aud_ok {
            let actual = match &c.aud {
                Audience::One(a) => a.clone(),
                Audience::Many(list) => list.join(","),
            };
            return Err(GcpError::WrongAudience {
                expected: audience.to_string(),
                actual: truncate(&actual, 128),
            });
        }
        let now_s = now.timestamp();
        if now_s > c.exp.saturating_add(LEEWAY_SECONDS) {
            return Err(GcpError::Expired {
                now,
                exp: ts(c.exp),
            });
        }
        let valid_from = c.nbf.map_or(c.iat, |nbf| nbf.max(c.iat));
        if valid_from > now_s.saturating_add(LEEWAY_SECONDS) {
            return Err(GcpError::NotYetValid {
                now,
                valid_from: ts(valid_from),
            });
        }
        let ce = c
            .google
            .and_then(|g| g.compute_engine)
            .filter(|ce| !ce.instance_id.is_empty())
            .ok_or(GcpError::NotComputeEngine)?;
        Ok(Verified::__new_after_verification(Identity::Gcp {
            instance_id: ce.instance_id,
            project_id: ce.project_id,
            zone: ce.zone,
        }))
    }
}
