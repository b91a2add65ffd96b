//! Trust flags shared by `instauth server` (SPEC.md §6), turned into the three verifiers.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use instauth_verify::Clock;

/// Where the verifiers' trust material comes from.
#[derive(Args, Clone, Debug)]
pub struct TrustArgs {
    /// PEM file or directory adding to / overriding the built-in AWS region certificates
    /// (`# region: NAME` comments or `NAME.pem` files; `default` is the fallback).
    #[arg(long, env = "INSTAUTH_AWS_CERTIFICATES")]
    pub aws_certificates: Option<PathBuf>,
    /// PEM bundle of trust anchors replacing the built-in Azure roots.
    #[arg(long, env = "INSTAUTH_AZURE_ROOTS")]
    pub azure_roots: Option<PathBuf>,
    /// PEM bundle of extra Azure intermediate certificates.
    #[arg(long, env = "INSTAUTH_AZURE_INTERMEDIATES")]
    pub azure_intermediates: Option<PathBuf>,
    /// Google JWKS: an http(s) URL, or a path to a JWKS JSON file.
    #[arg(long, env = "INSTAUTH_GOOGLE_JWKS_URL", default_value = instauth_verify_gcp::DEFAULT_JWKS_URL)]
    pub google_jwks_url: String,
    /// The audience GCP tokens must be issued for.
    #[arg(long, env = "INSTAUTH_GOOGLE_AUDIENCE", default_value = "coder")]
    pub google_audience: String,
}

impl TrustArgs {
    /// Builds the verifiers, checking validity at `clock`'s time.
    pub fn verifiers(&self, clock: Arc<dyn Clock>) -> anyhow::Result<instauth_api::Verifiers> {
        let aws = instauth_verify_aws::AwsVerifier::from_config(self.aws_certificates.as_deref())
            .context("loading --aws-certificates")?;
        let azure_trust = instauth_verify_azure::AzureTrust::from_config(
            self.azure_roots.as_deref(),
            self.azure_intermediates.as_deref(),
        )
        .context("loading --azure-roots / --azure-intermediates")?;
        let azure = instauth_verify_azure::AzureVerifier::new(azure_trust, clock.clone());
        let gcp = instauth_verify_gcp::GcpVerifier::from_config(
            &self.google_jwks_url,
            &self.google_audience,
            clock,
        )
        .context("loading --google-jwks-url")?;
        Ok(instauth_api::Verifiers { aws, azure, gcp })
    }
}
