//! `instauth identity verify`: check an agent's proof offline (SPEC §6).
//!
//! Wiring only: the trust material is loaded and the proof checked by the verifier crates, with
//! the same flags (and environment variables) as `instauth server`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use instauth_types::{Proof, Provider};
use instauth_verify::{Clock, FixedClock, SystemClock};

/// `--provider` values: the project's one spelling of the clouds.
fn provider_parser() -> impl clap::builder::TypedValueParser<Value = Provider> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Provider::NAMES).try_map(|s| s.parse::<Provider>())
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
    #[arg(long, value_parser = provider_parser())]
    pub provider: Provider,
    /// The JSON request body an agent would POST; `-` reads standard input.
    pub file: PathBuf,
    /// Check validity (Azure certificate chain, GCP token times) at this RFC 3339 time instead
    /// of now, to inspect old proofs.
    #[arg(long, value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,
    /// Trust material, as for `instauth server`.
    #[command(flatten)]
    pub trust: crate::trust::TrustArgs,
    /// Allow-lists, as for `instauth server`: a proof outside them fails.
    #[command(flatten)]
    pub allow: crate::access::AllowArgs,
    /// Fetch an unknown Azure issuing CA from the signer certificate's AIA URL, as the server
    /// does. Off by default: verification stays offline.
    #[arg(long, env = "INSTAUTH_AZURE_AIA", value_enum, default_value = "off")]
    pub azure_aia: crate::trust::OnOff,
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

/// Verifies the proof in `args.file` and checks it against the allow-lists; prints the identity
/// as JSON on stdout and returns success, or prints why it failed on stderr and returns 1. Unreadable input or
/// trust material is an `Err`.
pub async fn run(args: IdentityVerifyArgs) -> anyhow::Result<ExitCode> {
    let clock: Arc<dyn Clock> = match args.at {
        Some(t) => Arc::new(FixedClock::new(t)),
        None => Arc::new(SystemClock),
    };
    let input = read_input(&args.file)?;
    let mut verifiers = args.trust.verifiers(clock)?;
    if args.azure_aia == crate::trust::OnOff::On {
        // In memory only: this command never writes the server's database.
        let fetcher =
            instauth_verify_azure::AiaFetcher::new(None).context("setting up --azure-aia")?;
        verifiers = verifiers.with_aia(fetcher);
    }
    let verifiers = Arc::new(verifiers);
    let proof = Proof::from_json(args.provider, &input).with_context(|| {
        format!(
            "{} is not a {} request body (JSON as an agent would POST it)",
            args.file.display(),
            args.provider
        )
    })?;
    let result = verifiers.verify(proof).await;
    match result {
        Ok(identity) => {
            if let Err(why) =
                instauth_api::access::check_allow_lists(&identity, &args.allow.lists())
            {
                eprintln!("identity not allowed: {why}");
                return Ok(ExitCode::from(1));
            }
            println!("{}", serde_json::to_string(&identity)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("identity verification failed: {why}");
            let unknown_issuer = matches!(
                why,
                instauth_api::VerifyError::Azure(instauth_verify_azure::AzureError::UnknownIssuer(
                    _
                ))
            );
            if unknown_issuer && args.azure_aia == crate::trust::OnOff::Off {
                eprintln!(
                    "hint: the server fetches such an issuing CA from its caIssuers URL \
                     (--azure-aia, on by default there); add --azure-aia on to do the same here"
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}
