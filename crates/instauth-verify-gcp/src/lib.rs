//! Google instance identity JWT verifier.
//!
//! Compute Engine's metadata `identity` endpoint (`format=full`) returns an RS256 JWT signed by a
//! Google key published as a JWKS. Checks (SPEC §2): `alg` is exactly `RS256`; `kid` names a
//! key of the JWKS; the signature verifies; `iss` is `https://accounts.google.com` or
//! `accounts.google.com`; `aud` equals the configured audience exactly; `exp`, `iat` (and `nbf`
//! when present) hold with [`LEEWAY_SECONDS`] of leeway. The identity comes from the verified
//! `google.compute_engine` claims.
//!
//! RS256 is implemented here with `ring` rather than through a JWT crate: the algorithm is not
//! chosen from the token but fixed ([`jwt`] refuses every `alg` but `RS256` before looking at a
//! key, so `none`, `HS256` keyed with the public key and the like cannot be confused for it),
//! and keys are decoded once per JWKS rather than per token.
//!
//! Keys come from a JWKS file or URL ([`JwksSource`]); a URL is cached for its
//! `Cache-Control: max-age`, refetched (at most once per [`MIN_REFETCH_INTERVAL`]) when a token
//! names an unknown `kid`, and the last good set is kept when a refresh fails.

use std::path::Path;
use std::sync::Arc;

use instauth_types::GoogleInstanceIdentityRequest;
use instauth_verify::{Clock, Identity, Verified};

pub mod jwks;
pub mod jwt;

pub use jwks::{JwkSet, JwksError, JwksSource, RemoteJwks, MIN_REFETCH_INTERVAL};
pub use jwt::{GcpError, LEEWAY_SECONDS};

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
}
