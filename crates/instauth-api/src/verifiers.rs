//! The three clouds' verifiers behind one entry point, [`Verifiers::verify`], used by the
//! exchange endpoints and by `instauth identity verify` alike; the bounded pool their CPU work
//! runs on ([`VerifyPool`]); and the trust files they are built from and re-read on SIGHUP
//! ([`TrustFiles`]).
//!
//! Where the work runs (DESIGN.md): signature and chain checks are CPU work and never run on
//! the async workers that serve HTTP. Each proof's CPU part is handed to tokio's blocking
//! threads, at most one per core ([`VerifyPool`]), so at most that many proofs are checked
//! at once whatever arrives, and `/healthz`, heartbeats and the admin API keep their threads.
//! Network IO (Google's JWKS, an Azure issuing CA's AIA download) happens before or between
//! those hand-offs, on the async side, holding no slot. A proof that waits longer than
//! [`VerifyPool::wait`] for a slot is answered 503 with `Retry-After`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use instauth_types::{AwsInstanceIdentityRequest, Proof, Provider};
use instauth_verify::trust::{sort_by_expiry, TrustCertificate, TrustError};
use instauth_verify::{Identity, Verified};
use instauth_verify_aws::{AwsError, AwsVerifier};
use instauth_verify_azure::{AiaFetcher, AzureError, AzureTrust, AzureVerifier};
use instauth_verify_gcp::{GcpError, GcpVerifier};

pub use crate::pool::{PoolError, VerifyPool};

/// Why a proof was not verified, by cloud; `error.rs` maps it to a status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// An AWS proof.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// An Azure proof.
    #[error(transparent)]
    Azure(#[from] AzureError),
    /// A Google proof.
    #[error(transparent)]
    Gcp(#[from] GcpError),
    /// The verification pool did not run the check.
    #[error("{source}")]
    Pool {
        /// The cloud whose proof waited.
        provider: Provider,
        /// What happened.
        source: PoolError,
    },
}

impl VerifyError {
    /// The cloud whose proof failed.
    pub fn provider(&self) -> Provider {
        match self {
            VerifyError::Aws(_) => Provider::Aws,
            VerifyError::Azure(_) => Provider::Azure,
            VerifyError::Gcp(_) => Provider::Gcp,
            VerifyError::Pool { provider, .. } => *provider,
        }
    }

    /// A temporary failure: the proof may be good but cannot be checked now (Google's keys or
    /// an Azure issuing CA unreachable with nothing cached, or the pool saturated).
    pub fn is_unavailable(&self) -> bool {
        match self {
            VerifyError::Aws(_) => false,
            VerifyError::Azure(e) => e.is_unavailable(),
            VerifyError::Gcp(e) => e.is_unavailable(),
            VerifyError::Pool { source, .. } => matches!(source, PoolError::Busy { .. }),
        }
    }

    /// A fault of the server rather than of the proof (a verification panicked).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            VerifyError::Pool {
                source: PoolError::Failed(_),
                ..
            }
        )
    }

    fn pool(provider: Provider) -> impl FnOnce(PoolError) -> VerifyError {
        move |source| VerifyError::Pool { provider, source }
    }
}

/// The verifiers of the three clouds, the optional AIA fetcher for unknown Azure issuing CAs,
/// and the pool their CPU work runs on. Share it in an [`Arc`]: [`Verifiers::verify`] hands
/// clones of it to the pool.
#[derive(Debug)]
pub struct Verifiers {
    /// Swapped whole on reload; a verification in flight keeps the material it started with.
    aws: ArcSwap<AwsVerifier>,
    /// Reloaded in place ([`AzureVerifier::replace_trust`]), keeping the fetched issuing CAs.
    azure: AzureVerifier,
    gcp: GcpVerifier,
    aia: Option<AiaFetcher>,
    pool: VerifyPool,
    /// Set when an Azure proof was verified again with a fetched issuing CA (which may have
    /// been admitted): the listing changed since [`Verifiers::take_trust_changed`].
    trust_changed: AtomicBool,
}

impl Verifiers {
    /// The three verifiers on a pool sized to the cores ([`VerifyPool::sized_to_cores`]),
    /// without AIA fetching.
    pub fn new(aws: AwsVerifier, azure: AzureVerifier, gcp: GcpVerifier) -> Self {
        Verifiers {
            aws: ArcSwap::from_pointee(aws),
            azure,
            gcp,
            aia: None,
            pool: VerifyPool::sized_to_cores(),
            trust_changed: AtomicBool::new(false),
        }
    }

    /// Fetches unknown Azure issuing CAs with `fetcher` (`--azure-aia on`).
    pub fn with_aia(mut self, fetcher: AiaFetcher) -> Self {
        self.aia = Some(fetcher);
        self
    }

    /// Runs the CPU work on `pool` instead.
    pub fn with_pool(mut self, pool: VerifyPool) -> Self {
        self.pool = pool;
        self
    }

    /// The AWS verifier now in use.
    pub fn aws(&self) -> Arc<AwsVerifier> {
        self.aws.load_full()
    }

    /// The Azure verifier.
    pub fn azure(&self) -> &AzureVerifier {
        &self.azure
    }

    /// The Google verifier.
    pub fn gcp(&self) -> &GcpVerifier {
        &self.gcp
    }

    /// The AIA fetcher, when Azure issuing CAs may be fetched.
    pub fn aia(&self) -> Option<&AiaFetcher> {
        self.aia.as_ref()
    }

    /// The verification pool.
    pub fn pool(&self) -> &VerifyPool {
        &self.pool
    }

    /// Verifies `proof` with its cloud's verifier, the CPU work on the pool (see the module
    /// documentation). The proof is taken by value: it moves to the pool's thread uncopied.
    pub async fn verify(self: &Arc<Self>, proof: Proof) -> Result<Verified<Identity>, VerifyError> {
        match proof {
            Proof::Aws(req) => Ok(self.verify_aws(req).await?.1),
            Proof::Azure(req) => {
                let pool = &self.pool;
                // A second job is the verification with a fetched issuing CA.
                let jobs = AtomicUsize::new(0);
                let verified = self
                    .azure
                    .verify_owned_with_aia(req, self.aia.as_ref(), |job| {
                        jobs.fetch_add(1, Ordering::Relaxed);
                        async move {
                            pool.run(move || job.run())
                                .await
                                .map_err(VerifyError::pool(Provider::Azure))
                        }
                    })
                    .await;
                if jobs.load(Ordering::Relaxed) > 1 {
                    self.trust_changed.store(true, Ordering::Relaxed);
                }
                verified
            }
            Proof::Gcp(req) => {
                // Parsing and the JWKS (network) on this side, holding no permit.
                let prepared = self.gcp.prepare(req).await?;
                let this = Arc::clone(self);
                Ok(self
                    .pool
                    .run(move || this.gcp.finish(prepared))
                    .await
                    .map_err(VerifyError::pool(Provider::Gcp))??)
            }
        }
    }

    /// Verifies an AWS proof on the pool and hands the request back with the identity: the
    /// exchange reads the request's fields afterwards, and moving it to a pool thread and back
    /// costs less than copying it there (and frees it on the thread that allocated it).
    pub async fn verify_aws(
        self: &Arc<Self>,
        req: AwsInstanceIdentityRequest,
    ) -> Result<(AwsInstanceIdentityRequest, Verified<Identity>), VerifyError> {
        let this = Arc::clone(self);
        let (req, verified) = self
            .pool
            .run(move || {
                let verified = this.aws.load().verify(&req);
                (req, verified)
            })
            .await
            .map_err(VerifyError::pool(Provider::Aws))?;
        Ok((req, verified?))
    }

    /// Whether the trusted certificates may have changed (an Azure issuing CA fetched) since
    /// the last call; clears the mark.
    pub fn take_trust_changed(&self) -> bool {
        self.trust_changed.swap(false, Ordering::Relaxed)
    }

    /// Puts reloaded trust material in place: new AWS region certificates, new Azure roots and
    /// issuing CAs (the fetched issuing CAs stay, but a path through one must end at one of the
    /// new roots). Verifications in flight finish with the material they started with.
    pub fn replace_trust(&self, material: TrustMaterial) {
        self.aws.store(Arc::new(material.aws));
        self.azure.replace_trust(material.azure);
    }

    /// Every trusted certificate, AWS and Azure, built-in, configured and fetched, soonest
    /// expiry first: what `instauth trust list` prints and the expiry metric exports.
    pub fn trust_certificates(&self) -> Vec<TrustCertificate> {
        let mut all = self.aws.load().trust_certificates().to_vec();
        all.extend(self.azure.trust_certificates());
        sort_by_expiry(&mut all);
        all
    }
}

/// The trust files of the flags `--aws-certificates`, `--azure-roots` and
/// `--azure-intermediates`; read at start and again on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustFiles {
    /// PEM file or directory of AWS region certificates, adding to / overriding the built-in
    /// ones.
    pub aws_certificates: Option<PathBuf>,
    /// PEM bundle of Azure trust anchors, replacing the built-in ones.
    pub azure_roots: Option<PathBuf>,
    /// PEM bundle of extra Azure issuing CAs.
    pub azure_intermediates: Option<PathBuf>,
}

/// Trust material read from [`TrustFiles`], for [`Verifiers::replace_trust`].
#[derive(Debug)]
pub struct TrustMaterial {
    /// AWS region certificates (built-in plus configured).
    pub aws: AwsVerifier,
    /// Azure roots and issuing CAs (built-in, replaced or extended by the files).
    pub azure: AzureTrust,
}

impl TrustFiles {
    /// Reads every file. Either all of them load or none is used: the error names the file,
    /// and the line of a bad certificate.
    pub fn load(&self) -> Result<TrustMaterial, TrustError> {
        let aws = AwsVerifier::from_config(self.aws_certificates.as_deref())?;
        let azure = AzureTrust::from_config(
            self.azure_roots.as_deref(),
            self.azure_intermediates.as_deref(),
        )?;
        Ok(TrustMaterial { aws, azure })
    }
}

/// The certificates of `certs` that are still needed (valid at `now`, validity checked) and
/// expire within [`EXPIRY_WARNING`] of `now`, soonest first; each is logged as a warning
/// naming it. Returns how many.
pub fn warn_expiring(certs: &[TrustCertificate], now: chrono::DateTime<chrono::Utc>) -> usize {
    let within = chrono::Duration::from_std(EXPIRY_WARNING).unwrap_or(chrono::Duration::MAX);
    let soon = instauth_verify::trust::needed_and_expiring(certs, now, within);
    for c in &soon {
        tracing::warn!(
            provider = c.provider.as_str(),
            subject = %c.subject,
            not_after = %c.not_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            source = %c.source,
            "A trusted certificate that is still needed expires within 30 days: see `instauth trust list`."
        );
    }
    soon.len()
}

/// How close to its expiry a still-needed trusted certificate is reported (start-up warning,
/// exit code of `instauth trust list`).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    /// A saturated pool is a temporary failure (503), a panicked verification the server's
    /// fault (500); the pool's own behaviour is tested in `pool.rs`.
    #[test]
    fn pool_errors_are_unavailable_or_internal() {
        let busy = VerifyError::Pool {
            provider: Provider::Gcp,
            source: PoolError::Busy {
                size: 1,
                waited: Duration::from_millis(50),
            },
        };
        assert!(busy.is_unavailable() && !busy.is_internal());
        assert_eq!(busy.provider(), Provider::Gcp);
        let failed = VerifyError::Pool {
            provider: Provider::Aws,
            source: PoolError::Failed("boom".into()),
        };
        assert!(failed.is_internal() && !failed.is_unavailable());
        assert_eq!(failed.provider(), Provider::Aws);
    }
}
