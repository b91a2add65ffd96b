//! Google instance identity JWT verifier.
//!
//! Compute Engine's metadata `identity` endpoint (`format=full`) returns an RS256 JWT signed by a
//! Google key published as a JWKS. Checks (SPEC §2): `alg` is exactly `RS256`; `kid` names a
//! key of the JWKS; the signature verifies; `iss` is `https://accounts.google.com` or
//! `accounts.google.com`; `aud` equals the configured audience exactly; `exp`, `iat` (and `nbf`
//! when present) hold with [`LEEWAY_SECONDS`] of leeway. The identity comes from the verified
//! `google.compute_engine` claims.
//!
//! RS256 is implemented here rather than through a JWT crate: the algorithm is not chosen from
//! the token but fixed ([`jwt`] refuses every `alg` but `RS256` before looking at a key, so
//! `none`, `HS256` keyed with the public key and the like cannot be confused for it), and keys
//! are decoded and prepared once per JWKS rather than per token (the RSA verification is
//! `instauth_verify::pkcs7::RsaPublicKey`'s, as for AWS).
//!
//! Keys come from a JWKS file or URL ([`JwksSource`]); a URL is cached for its
//! `Cache-Control: max-age`, refetched (at most once per [`MIN_REFETCH_INTERVAL`]) when a token
//! names an unknown `kid`, and the last good set is kept when a refresh fails.
//!
//! # Running it
//!
//! [`GcpVerifier::verify`] does it all. A server splits it so that no CPU-bound work runs on
//! the threads that serve HTTP and no blocking-pool slot waits on the network:
//! [`GcpVerifier::prepare`] (async: parses the token and obtains its key, fetching the JWKS if
//! need be) then [`GcpVerifier::finish`] (synchronous: the RS256 signature and the claims), run
//! on a blocking pool. A JWKS that cannot be fetched while none is cached is
//! [`GcpError::is_unavailable`]: try again later, the proof may be good.

use std::path::Path;
use std::sync::Arc;

use instauth_types::GoogleInstanceIdentityRequest;
use instauth_verify::{Clock, Identity, Verified};

pub mod jwks;
pub mod jwt;

pub use jwks::RsaJwk;
pub use jwks::{JwkSet, JwksError, JwksSource, RemoteJwks, MIN_REFETCH_INTERVAL};
pub use jwt::{GcpError, OwnedJwt, LEEWAY_SECONDS};

/// Google's JWKS for identity tokens (the `--google-jwks-url` default).
pub const DEFAULT_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// Accepted `iss` values.
pub const ISSUERS: &[&str] = &["https://accounts.google.com", "accounts.google.com"];

/// Verifies Google instance identity tokens. Cheap to share (`Arc`) and `Sync`.
#[derive(Debug)]
pub struct GcpVerifier {
    audience: String,
    jwks: JwksSource,
    clock: Arc<dyn Clock>,
}

impl GcpVerifier {
    /// A verifier expecting `aud == audience`, with keys from `jwks`.
    pub fn new(audience: impl Into<String>, jwks: JwksSource, clock: Arc<dyn Clock>) -> Self {
        GcpVerifier {
            audience: audience.into(),
            jwks,
            clock,
        }
    }

    /// As the server and CLI flags say: `jwks` is an `http(s)://` URL (fetched lazily, cached)
    /// or a path to a JWKS JSON file (read now).
    pub fn from_config(
        jwks: &str,
        audience: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, JwksError> {
        let source = if jwks.starts_with("https://") || jwks.starts_with("http://") {
            JwksSource::Remote(RemoteJwks::new(jwks, clock.clone())?)
        } else {
            JwksSource::Static(Arc::new(JwkSet::from_file(Path::new(jwks))?))
        };
        Ok(Self::new(audience, source, clock))
    }

    /// The expected audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies a request body (may fetch the JWKS).
    pub async fn verify(
        &self,
        req: &GoogleInstanceIdentityRequest,
    ) -> Result<Verified<Identity>, GcpError> {
        let token = req.json_web_token.trim();
        if token.is_empty() {
            return Err(GcpError::MissingProof);
        }
        let unverified = jwt::UnverifiedJwt::parse(token)?;
        let key = self.jwks.key(unverified.kid()).await?;
        let claims = unverified.verify_signature(&key)?;
        claims.check(&self.audience, self.clock.now())
    }

    /// The first half of [`GcpVerifier::verify`]: parses the token (header checks: `alg`,
    /// `kid`) and obtains its key, fetching the JWKS when needed. No signature work. Takes the
    /// request by value so that the token moves on to [`GcpVerifier::finish`] uncopied.
    pub async fn prepare(
        &self,
        req: GoogleInstanceIdentityRequest,
    ) -> Result<PreparedToken, GcpError> {
        let mut token = req.json_web_token;
        if token.trim().len() != token.len() {
            token = token.trim().to_owned();
        }
        if token.is_empty() {
            return Err(GcpError::MissingProof);
        }
        let jwt = OwnedJwt::parse(token)?;
        let key = self.jwks.key(jwt.kid()).await?;
        Ok(PreparedToken { jwt, key })
    }

    /// The second half of [`GcpVerifier::verify`]: the RS256 signature, then `iss`, `aud` and
    /// the times at the clock's time. Synchronous CPU work, for a blocking pool.
    pub fn finish(&self, prepared: PreparedToken) -> Result<Verified<Identity>, GcpError> {
        let claims = prepared.jwt.verify_signature(&prepared.key)?;
        claims.check(&self.audience, self.clock.now())
    }
}

/// A token whose header is checked and whose key is at hand, signature NOT yet checked: the
/// output of [`GcpVerifier::prepare`], for [`GcpVerifier::finish`]. Its `Debug` shows the
/// `kid` only.
pub struct PreparedToken {
    jwt: OwnedJwt,
    key: Arc<RsaJwk>,
}

impl std::fmt::Debug for PreparedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedToken")
            .field("kid", &self.jwt.kid())
            .finish_non_exhaustive()
    }
}
