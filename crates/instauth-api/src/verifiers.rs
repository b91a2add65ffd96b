//! The three clouds' verifiers behind one entry point, [`Verifiers::verify`], used by the
//! exchange endpoints and by `instauth identity verify` alike.

use instauth_types::{Proof, Provider};
use instauth_verify::{Identity, Verified};
use instauth_verify_aws::{AwsError, AwsVerifier};
use instauth_verify_azure::{AzureError, AzureVerifier};
use instauth_verify_gcp::{GcpError, GcpVerifier};

/// Why a proof was rejected, by cloud; `error.rs` maps it to a status.
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
}

impl VerifyError {
    /// The cloud whose proof failed.
    pub fn provider(&self) -> Provider {
        match self {
            VerifyError::Aws(_) => Provider::Aws,
            VerifyError::Azure(_) => Provider::Azure,
            VerifyError::Gcp(_) => Provider::Gcp,
        }
    }
}

/// The verifiers of the three clouds, built from the trust flags.
#[derive(Debug)]
pub struct Verifiers {
    /// AWS instance identity.
    pub aws: AwsVerifier,
    /// Azure attested data.
    pub azure: AzureVerifier,
    /// Google identity JWT.
    pub gcp: GcpVerifier,
}

impl Verifiers {
    /// Verifies `proof` with its cloud's verifier.
    pub async fn verify(&self, proof: &Proof) -> Result<Verified<Identity>, VerifyError> {
        Ok(match proof {
            Proof::Aws(r) => self.aws.verify(r)?,
            Proof::Azure(r) => self.azure.verify(r)?,
            Proof::Gcp(r) => self.gcp.verify(r).await?,
        })
    }
}
