//! `instauth identity verify`: check an agent's proof offline (SPEC §6).
//!
//! Wiring only: the trust material is loaded and the proof checked by the verifier crates, with
//! the same flags (and environment variables) as `instauth server`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use instauth_verify::{Clock, FixedClock, Identity, SystemClock, Verified};

/// Which cloud's proof the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderArg {
    /// `{"document", "signature", "pkcs7"?}` as POSTed to `.../aws-instance-identity`.
    Aws,
    /// `{"signature", "encoding"}` as POSTed to `.../azure-instance-identity`.
    Azure,
    /// `{"json_web_token"}` as POSTed to `.../google-instance-identity`.
    Gcp,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time (e.g. 2022-04-19T02:00:00Z): {e}"))
}

/// Arguments of `instauth identity verify`.
#[derive(Debug, clap::Args)]
pub struct IdentityVerifyArgs {
    /// The cloud that issued the proof.
    #[arg(long, value_enum)]
    pub provider: ProviderArg,
    /// The JSON request body an agent would POST; `-` reads standard input.
    pub file: PathBuf,
    /// Check validity (Azure certificate chain, GCP token times) at this RFC 3339 time instead
    /// of now, to inspect old proofs.
    #[arg(long, value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,
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

fn read_input(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .context("cannot read standard input")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

fn body<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    args: &IdentityVerifyArgs,
) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).with_context(|| {
        format!(
            "{} is not a {:?} request body (JSON as an agent would POST it)",
            args.file.display(),
            args.provider
        )
        .to_lowercase()
    })
}

/// Verifies the proof in `args.file`; prints the identity as JSON on stdout and returns
/// success, or prints why verification failed on stderr and returns 1. Unreadable input or
/// trust material is an `Err`.
pub async fn run(args: IdentityVerifyArgs) -> anyhow::Result<ExitCode> {
    let clock: Arc<dyn Clock> = match args.at {
        Some(t) => Arc::new(FixedClock::new(t)),
        None => Arc::new(SystemClock),
    };
    let input = read_input(&args.file)?;
    let result: Result<Verified<Identity>, String> = match args.provider {
        ProviderArg::Aws => {
            let verifier =
                instauth_verify_aws::AwsVerifier::from_config(args.aws_certificates.as_deref())
                    .context("cannot load AWS certificates")?;
            let req = body(&input, &args)?;
            verifier.verify(&req).map_err(|e| e.to_string())
        }
        ProviderArg::Azure => {
            let trust = instauth_verify_azure::AzureTrust::from_config(
                args.azure_roots.as_deref(),
                args.azure_intermediates.as_deref(),
            )
            .context("cannot load Azure trust material")?;
            let verifier = instauth_verify_azure::AzureVerifier::new(trust, clock);
            let req = body(&input, &args)?;
            verifier.verify(&req).map_err(|e| e.to_string())
        }
        ProviderArg::Gcp => {
            let verifier = instauth_verify_gcp::GcpVerifier::from_config(
                &args.google_jwks_url,
                &args.google_audience,
                clock,
            )
            .context("cannot load Google keys")?;
            let req = body(&input, &args)?;
            verifier.verify(&req).await.map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(identity) => {
            println!("{}", serde_json::to_string(&identity)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("identity verification failed: {why}");
            Ok(ExitCode::from(1))
        }
    }
}
