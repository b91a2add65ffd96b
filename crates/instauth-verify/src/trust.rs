//! Trust material shared by the AWS and Azure verifiers: loading PEM files, the one error type
//! for it, and the description of each trusted certificate that `instauth trust list` prints
//! and the expiry metric exports.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use der::Decode;
use serde::{Serialize, Serializer};
use x509_cert::Certificate;

use crate::pem::{parse_certificates, PemCertificate, PemError};
use instauth_types::Provider;

/// Why configured trust material (`--aws-certificates`, `--azure-roots`,
/// `--azure-intermediates`) could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A PEM file is malformed.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong, and on which line.
        source: PemError,
    },
    /// The path holds no certificate at all (likely a mistake).
    #[error("{path}: no certificates found")]
    Empty {
        /// The path.
        path: PathBuf,
    },
    /// An AWS certificate has no region: no `# region:` comment and the file is not
    /// `REGION.pem`.
    #[error("{path}: certificate on line {line} has no region (add a `# region: NAME` comment or name the file NAME.pem)")]
    NoRegion {
        /// The file.
        path: PathBuf,
        /// Line of its BEGIN line.
        line: usize,
    },
    /// A certificate does not parse, or cannot serve in the role it was given (a root that is
    /// not a usable trust anchor, an AWS certificate without an RSA key).
    #[error("{path}: certificate on line {line} is not usable: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Line of its BEGIN line.
        line: usize,
        /// Why.
        reason: String,
    },
}

/// Parses PEM text that came from `origin` (a file, or a name for built-in material).
pub fn parse_pem(text: &str, origin: &Path) -> Result<Vec<PemCertificate>, TrustError> {
    parse_certificates(text).map_err(|source| TrustError::Pem {
        path: origin.to_path_buf(),
        source,
    })
}

/// Where a trusted certificate came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrustSource {
    /// Compiled into the binary.
    BuiltIn,
    /// A configured file (`--aws-certificates`, `--azure-roots`, `--azure-intermediates`).
    File(PathBuf),
    /// Fetched from a certificate's Authority Information Access URL.
    Fetched(String),
}

impl fmt::Display for TrustSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustSource::BuiltIn => f.write_str("built-in"),
            TrustSource::File(path) => write!(f, "{}", path.display()),
            TrustSource::Fetched(url) => f.write_str(url),
        }
    }
}

/// Serialised as its display form: `built-in`, the file path, or the URL.
impl Serialize for TrustSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a trusted certificate is used as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TrustRole {
    /// A trust anchor (Azure).
    Root,
    /// An issuing CA a chain may pass through (Azure).
    Intermediate,
    /// The certificate whose key signs a region's identity documents (AWS).
    RegionCertificate,
}

/// One trusted certificate, as `instauth trust list` shows it and the expiry metric exports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrustCertificate {
    /// The cloud it vouches for.
    pub provider: Provider,
    /// Subject distinguished name (RFC 4514 string).
    pub subject: String,
    /// Issuer distinguished name (RFC 4514 string).
    pub issuer: String,
    /// notBefore.
    pub not_before: DateTime<Utc>,
    /// notAfter.
    pub not_after: DateTime<Utc>,
    /// Where it came from.
    pub source: TrustSource,
    /// What it is used as.
    pub role: TrustRole,
    /// The AWS region it serves (AWS only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Whether verification checks its validity dates. AWS region certificates are used for
    /// their key only (AWS signs with keys whose certificates expired), so an AWS entry's
    /// expiry means nothing and it is never "expiring".
    pub expiry_checked: bool,
    /// Lowercase hex SHA-256 of the DER, to compare with a published fingerprint.
    pub sha256: String,
}

impl TrustCertificate {
    /// Describes the certificate `der`. Fails if it is not an X.509 certificate.
    pub fn from_der(
        provider: Provider,
        der: &[u8],
        source: TrustSource,
        role: TrustRole,
        expiry_checked: bool,
    ) -> Result<Self, der::Error> {
        let cert = Certificate::from_der(der)?;
        Ok(Self::from_parsed(
            provider,
            &cert,
            der,
            source,
            role,
            expiry_checked,
        ))
    }

    /// Describes an already parsed certificate whose DER is `der`.
    pub fn from_parsed(
        provider: Provider,
        cert: &Certificate,
        der: &[u8],
        source: TrustSource,
        role: TrustRole,
        expiry_checked: bool,
    ) -> Self {
        let tbs = &cert.tbs_certificate;
        let time = |t: &x509_cert::time::Time| {
            let secs = i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX);
            DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        TrustCertificate {
            provider,
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            not_before: time(&tbs.validity.not_before),
            not_after: time(&tbs.validity.not_after),
            source,
            role,
            region: None,
            expiry_checked,
            sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Valid at `now` (within notBefore..=notAfter).
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Still needed and expiring: its validity is checked, it is valid at `now`, and it
    /// expires within `within` of `now`. An already expired certificate is kept only so that
    /// old proofs verify at their own time (`--at`): it is not "needed" any more.
    pub fn is_needed_and_expiring(&self, now: DateTime<Utc>, within: chrono::Duration) -> bool {
        self.expiry_checked && self.is_valid_at(now) && self.not_after - now <= within
    }
}

/// The certificates of `certs` that are still needed and expire within `within` of `now`,
/// soonest first (for the start-up warning and the exit code of `instauth trust list`).
pub fn needed_and_expiring(
    certs: &[TrustCertificate],
    now: DateTime<Utc>,
    within: chrono::Duration,
) -> Vec<&TrustCertificate> {
    let mut out: Vec<_> = certs
        .iter()
        .filter(|c| c.is_needed_and_expiring(now, within))
        .collect();
    out.sort_by_key(|c| c.not_after);
    out
}

/// Sorts soonest expiry first, then by provider and subject (the order of `instauth trust list`).
pub fn sort_by_expiry(certs: &mut [TrustCertificate]) {
    certs.sort_by(|a, b| {
        (a.not_after, a.provider.as_str(), &a.subject).cmp(&(
            b.not_after,
            b.provider.as_str(),
            &b.subject,
        ))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: i64, not_after: i64, checked: bool) -> TrustCertificate {
        TrustCertificate {
            provider: Provider::Azure,
            subject: format!("CN={not_after}"),
            issuer: "CN=i".into(),
            not_before: DateTime::from_timestamp(not_before, 0).unwrap(),
            not_after: DateTime::from_timestamp(not_after, 0).unwrap(),
            source: TrustSource::BuiltIn,
            role: TrustRole::Intermediate,
            region: None,
            expiry_checked: checked,
            sha256: String::new(),
        }
    }

    #[test]
    fn only_valid_checked_certificates_expiring_soon_are_needed() {
        let day = 86_400;
        let now = DateTime::from_timestamp(1_000 * day, 0).unwrap();
        let certs = [
            cert(0, 1_010 * day, true),           // expires in 10 days: needed
            cert(0, 1_005 * day, true),           // in 5 days: needed, listed first
            cert(0, 1_100 * day, true),           // in 100 days: fine
            cert(0, 999 * day, true),             // already expired: kept for old proofs only
            cert(0, 1_001 * day, false),          // AWS: validity not checked
            cert(1_001 * day, 1_002 * day, true), // not valid yet
        ];
        let soon = needed_and_expiring(&certs, now, chrono::Duration::days(30));
        let subjects: Vec<_> = soon.iter().map(|c| c.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [format!("CN={}", 1_005 * day), format!("CN={}", 1_010 * day)]
        );
    }

    #[test]
    fn serialises_source_and_role_as_words() {
        let mut c = cert(0, 1, true);
        c.source = TrustSource::Fetched("http://www.microsoft.com/pkiops/certs/x.crt".into());
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json["source"],
            "http://www.microsoft.com/pkiops/certs/x.crt"
        );
        assert_eq!(json["role"], "intermediate");
        assert_eq!(json["provider"], "azure");
        assert!(json.get("region").is_none());
        c.source = TrustSource::File("/etc/roots.pem".into());
        assert_eq!(
            serde_json::to_value(&c).unwrap()["source"],
            "/etc/roots.pem"
        );
        assert_eq!(TrustSource::BuiltIn.to_string(), "built-in");
    }
}
