//! Trust flags shared by `instauth server`, `instauth identity verify` and `instauth trust
//! list` (SPEC.md §6), turned into the three verifiers; and `instauth trust list`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use instauth_api::{TrustFiles, Verifiers};
use instauth_types::Provider;
use instauth_verify::trust::{
    needed_and_expiring, sort_by_expiry, TrustCertificate, TrustRole, TrustSource,
};
use instauth_verify::Clock;

/// Where the verifiers' trust material comes from.
#[derive(Args, Clone, Debug)]
pub struct TrustArgs {
    /// PEM file or directory adding to / overriding the built-in AWS region certificates
    /// (`# region: NAME` comments or `NAME.pem` files; `default` is the fallback). Re-read on
    /// SIGHUP.
    #[arg(long, env = "INSTAUTH_AWS_CERTIFICATES")]
    pub aws_certificates: Option<PathBuf>,
    /// PEM bundle of trust anchors replacing the built-in Azure roots. Re-read on SIGHUP.
    #[arg(long, env = "INSTAUTH_AZURE_ROOTS")]
    pub azure_roots: Option<PathBuf>,
    /// PEM bundle of extra Azure intermediate certificates. Re-read on SIGHUP.
    #[arg(long, env = "INSTAUTH_AZURE_INTERMEDIATES")]
    pub azure_intermediates: Option<PathBuf>,
    /// Google JWKS: an http(s) URL, or a path to a JWKS JSON file.
    #[arg(long, env = "INSTAUTH_GOOGLE_JWKS_URL", default_value = instauth_verify_gcp::DEFAULT_JWKS_URL)]
    pub google_jwks_url: String,
    /// The audience GCP tokens must be issued for.
    #[arg(long, env = "INSTAUTH_GOOGLE_AUDIENCE", default_value = "coder")]
    pub google_audience: String,
}

/// `--azure-aia` values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl TrustArgs {
    /// The trust files, for loading now and again on SIGHUP.
    pub fn files(&self) -> TrustFiles {
        TrustFiles {
            aws_certificates: self.aws_certificates.clone(),
            azure_roots: self.azure_roots.clone(),
            azure_intermediates: self.azure_intermediates.clone(),
        }
    }

    /// Builds the verifiers (without AIA fetching), checking validity at `clock`'s time.
    pub fn verifiers(&self, clock: Arc<dyn Clock>) -> anyhow::Result<Verifiers> {
        let material = self.files().load().context(
            "loading the trust files (--aws-certificates, --azure-roots, --azure-intermediates)",
        )?;
        let azure = instauth_verify_azure::AzureVerifier::new(material.azure, clock.clone());
        let gcp = instauth_verify_gcp::GcpVerifier::from_config(
            &self.google_jwks_url,
            &self.google_audience,
            clock,
        )
        .context("loading --google-jwks-url")?;
        Ok(Verifiers::new(material.aws, azure, gcp))
    }
}

/// Output format of `instauth trust list`.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Output {
    /// Columns for people.
    Table,
    /// A JSON array for scripts.
    Json,
}

/// Arguments of `instauth trust list`.
#[derive(Args)]
pub struct TrustListArgs {
    /// Trust material, as for `instauth server`.
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Whether the server fetches Azure issuing CAs (AIA), as for `instauth server`: when on,
    /// the ones stored in its database are listed too (with `off` the server never uses them).
    #[arg(long, env = "INSTAUTH_AZURE_AIA", value_enum, default_value = "on")]
    pub azure_aia: OnOff,
    /// The server's database, to include the Azure issuing CAs it fetched (AIA). Read only
    /// when `--postgres-url` is given or the SQLite file exists; never created or migrated.
    #[command(flatten)]
    pub db: crate::DbArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
}

/// What a certificate's dates mean now: `ok`, `expiring` (still needed, expires within 30
/// days), `expired`, `not-yet-valid`, or `unchecked` (AWS: the dates are not checked).
fn status(c: &TrustCertificate, now: chrono::DateTime<chrono::Utc>) -> &'static str {
    let within =
        chrono::Duration::from_std(instauth_api::verifiers::EXPIRY_WARNING).unwrap_or_default();
    if !c.expiry_checked {
        "unchecked"
    } else if c.is_needed_and_expiring(now, within) {
        "expiring"
    } else if now > c.not_after {
        "expired"
    } else if now < c.not_before {
        "not-yet-valid"
    } else {
        "ok"
    }
}

/// A table cell: control characters escaped (subjects of configured or fetched certificates
/// must not drive the terminal).
fn cell(s: &str) -> String {
    s.chars().flat_map(char::escape_default).collect()
}

fn table(certs: &[TrustCertificate], now: chrono::DateTime<chrono::Utc>) -> String {
    let mut rows = vec![[
        "NOT AFTER",
        "STATUS",
        "PROVIDER",
        "ROLE",
        "REGION",
        "SUBJECT",
        "ISSUER",
        "SOURCE",
    ]
    .map(String::from)];
    for c in certs {
        let role = match c.role {
            TrustRole::Root => "root",
            TrustRole::Intermediate => "intermediate",
            TrustRole::RegionCertificate => "region-certificate",
            _ => "other",
        };
        rows.push([
            c.not_after
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            status(c, now).into(),
            c.provider.as_str().into(),
            role.into(),
            c.region.as_deref().map_or_else(|| "-".into(), cell),
            cell(&c.subject),
            cell(&c.issuer),
            cell(&c.source.to_string()),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The Azure issuing CAs the server fetched and stored, when its database can be read.
async fn fetched(db: &crate::DbArgs) -> anyhow::Result<Vec<TrustCertificate>> {
    let config = db.database()?;
    if let instauth_store::DatabaseConfig::Sqlite { path } = &config {
        if !path.exists() {
            return Ok(Vec::new());
        }
    }
    let what = config.describe();
    let store = instauth_store::Store::connect(config)
        .await
        .with_context(|| format!("connecting to {what}"))?;
    let rows = store
        .aia_certificates()
        .await
        .with_context(|| format!("reading the fetched certificates of {what}"))?;
    Ok(rows
        .into_iter()
        .filter_map(|(url, der)| {
            TrustCertificate::from_der(
                Provider::Azure,
                &der,
                TrustSource::Fetched(url),
                TrustRole::Intermediate,
                true,
            )
            .ok()
        })
        .collect())
}

/// `instauth trust list`: prints every trusted certificate, soonest expiry first; exit code 1
/// if one that is still needed expires within 30 days.
pub async fn list(args: TrustListArgs) -> anyhow::Result<ExitCode> {
    let now = chrono::Utc::now();
    let verifiers = args
        .trust
        .verifiers(Arc::new(instauth_verify::SystemClock))?;
    let mut certs = verifiers.trust_certificates();
    let found = match args.azure_aia {
        OnOff::On => fetched(&args.db).await,
        OnOff::Off => Ok(Vec::new()),
    };
    match found {
        Ok(found) => {
            for c in found {
                // A fetched CA that is also built in or configured is listed once.
                if !certs.iter().any(|k| k.sha256 == c.sha256) {
                    certs.push(c);
                }
            }
        }
        Err(e) => eprintln!("warning: fetched certificates not listed: {e:#}"),
    }
    sort_by_expiry(&mut certs);
    match args.output {
        Output::Table => print!("{}", table(&certs, now)),
        Output::Json => {
            let mut listed = Vec::with_capacity(certs.len());
            for cert in &certs {
                let mut entry = serde_json::to_value(cert)?;
                if let Some(fields) = entry.as_object_mut() {
                    fields.insert("status".into(), status(cert, now).into());
                }
                listed.push(entry);
            }
            println!("{}", serde_json::to_string_pretty(&listed)?);
        }
    }
    let within =
        chrono::Duration::from_std(instauth_api::verifiers::EXPIRY_WARNING).unwrap_or_default();
    let soon = needed_and_expiring(&certs, now, within);
    if soon.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for c in &soon {
        eprintln!(
            "expiring: {} {} (not after {}, {})",
            c.provider,
            cell(&c.subject),
            c.not_after
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            cell(&c.source.to_string()),
        );
    }
    eprintln!(
        "{} still-needed certificate(s) expire within 30 days",
        soon.len()
    );
    Ok(ExitCode::from(1))
}
