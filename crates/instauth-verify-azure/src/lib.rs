//! Azure attested data verifier.
//!
//! The proof is the base64 PKCS#7 of IMDS `/metadata/attested/document`. Checks, all on the ONE
//! certificate named by the ONE `SignerInfo` (issuer and serial number), never on "some
//! certificate in the bag" (DESIGN.md, "Lessons from peers' security bugs"):
//! 1. its subject alternative names include `metadata.azure.com`, `metadata.azure.us`,
//!    `metadata.azure.cn` or `metadata.microsoftazure.de`, or a subdomain of one;
//! 2. it chains (rustls-webpki, TLS server usage) to a trusted root at the clock's time, through
//!    intermediates from the PKCS#7, built in, or configured;
//! 3. its key verifies the signature over the content. Azure signs with
//!    `digestAlgorithm = sha256WithRSAEncryption` and no signed attributes (RSA over the raw
//!    content); that shape is accepted explicitly. With signed attributes, the `messageDigest`
//!    and the signature over the attributes are checked.
//!
//! Then `vmId`, `subscriptionId` and `location` are read from the verified content.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use instauth_types::AzureInstanceIdentityRequest;
use instauth_verify::encoding::{decode_base64_lenient_whitespace, Base64Error};
use instauth_verify::pem::{parse_certificates, PemError};
use instauth_verify::pkcs7::{Pkcs7Error, RsaPublicKey, UnverifiedSignedData};
use instauth_verify::{Clock, Identity, Verified};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::Deserialize;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// DNS names (and their subdomains) Azure's attested-data signing certificates are issued for.
pub const ALLOWED_SIGNER_NAMES: &[&str] = &[
    "metadata.azure.com",
    "metadata.azure.us",
    "metadata.azure.cn",
    "metadata.microsoftazure.de",
];

const BUILTIN_ROOTS: &[&str] = &[
    include_str!("../certs/root-digicert-global-root-g2.pem"),
    include_str!("../certs/root-baltimore-cybertrust-root.pem"),
];

const BUILTIN_INTERMEDIATES: &[&str] = &[
    include_str!("../certs/intermediate-microsoft-azure-tls-issuing-ca-05.pem"),
    include_str!("../certs/intermediate-microsoft-rsa-tls-ca-01.pem"),
];

/// Why an Azure proof was rejected. No variant carries signature or content bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzureError {
    /// `signature` is empty.
    #[error("no proof: `signature` is empty")]
    MissingProof,
    /// `encoding` is neither empty nor `pkcs7`.
    #[error("unsupported encoding {encoding:?}, expected \"pkcs7\"")]
    UnsupportedEncoding {
        /// The encoding given (at most 32 characters of it).
        encoding: String,
    },
    /// `signature` is not base64.
    #[error("field `signature` is {0}")]
    Base64(#[from] Base64Error),
    /// The PKCS#7 body is malformed, or its signer or signature does not check out.
    #[error(transparent)]
    Pkcs7(#[from] Pkcs7Error),
    /// The signer certificate is not issued for an Azure metadata name.
    #[error("signer certificate is not valid for an Azure metadata name (it names {names:?})")]
    UntrustedSignerName {
        /// The DNS names of the certificate (at most 8).
        names: Vec<String>,
    },
    /// The signer certificate or one of its issuers has expired at the verification time.
    #[error("signer certificate chain expired: now {now}, not after {not_after}")]
    CertificateExpired {
        /// The verification time.
        now: DateTime<Utc>,
        /// The certificate's notAfter.
        not_after: DateTime<Utc>,
    },
    /// The signer certificate or one of its issuers is not valid yet at the verification time.
    #[error("signer certificate chain not yet valid: now {now}, not before {not_before}")]
    CertificateNotYetValid {
        /// The verification time.
        now: DateTime<Utc>,
        /// The certificate's notBefore.
        not_before: DateTime<Utc>,
    },
    /// The signer certificate does not chain to a trusted root.
    #[error("signer certificate does not chain to a trusted Azure root: {reason}")]
    UntrustedChain {
        /// webpki's reason.
        reason: String,
    },
    /// The attested document's own validity (`timeStamp.expiresOn`, about 6 hours after
    /// `createdOn`) has passed: a replayed proof.
    #[error("attested document expired: now {now}, expiresOn {expires_on}")]
    DocumentExpired {
        /// The verification time.
        now: DateTime<Utc>,
        /// The document's `expiresOn`.
        expires_on: DateTime<Utc>,
    },
    /// The attested document was created after the verification time.
    #[error("attested document not yet valid: now {now}, createdOn {created_on}")]
    DocumentNotYetValid {
        /// The verification time.
        now: DateTime<Utc>,
        /// The document's `createdOn`.
        created_on: DateTime<Utc>,
    },
    /// The signed content is not the attested document JSON.
    #[error("attested document is not valid: {reason}")]
    MalformedDocument {
        /// Which part is wrong (never the document's text).
        reason: String,
    },
}

/// Why configured Azure trust material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzureTrustError {
    /// A file could not be read.
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
        /// What is wrong.
        source: PemError,
    },
    /// A certificate cannot serve as a trust anchor.
    #[error("{path}: certificate on line {line} cannot be a trust anchor: {reason}")]
    BadRoot {
        /// The file.
        path: PathBuf,
        /// Line of its BEGIN line.
        line: usize,
        /// Why.
        reason: String,
    },
    /// The file holds no certificate.
    #[error("{path}: no certificates found")]
    Empty {
        /// The path.
        path: PathBuf,
    },
}

/// Trust anchors and extra intermediates for Azure signer certificates.
#[derive(Debug, Clone)]
pub struct AzureTrust {
    roots: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
}

fn pem_ders(pem: &str, origin: &Path) -> Result<Vec<(usize, Vec<u8>)>, AzureTrustError> {
    let certs = parse_certificates(pem).map_err(|source| AzureTrustError::Pem {
        path: origin.to_path_buf(),
        source,
    })?;
    if certs.is_empty() {
        return Err(AzureTrustError::Empty {
            path: origin.to_path_buf(),
        });
    }
    Ok(certs.into_iter().map(|c| (c.line, c.der)).collect())
}

fn anchors(pem: &str, origin: &Path) -> Result<Vec<TrustAnchor<'static>>, AzureTrustError> {
    let mut out = Vec::new();
    for (line, der) in pem_ders(pem, origin)? {
        let der = CertificateDer::from(der);
        let anchor =
            webpki::anchor_from_trusted_cert(&der).map_err(|e| AzureTrustError::BadRoot {
                path: origin.to_path_buf(),
                line,
                reason: format!("{e:?}"),
            })?;
        out.push(anchor.to_owned());
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, AzureTrustError> {
    std::fs::read_to_string(path).map_err(|source| AzureTrustError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl AzureTrust {
    /// Built-in roots (DigiCert Global Root G2, Baltimore CyberTrust Root for old proofs, and the
    /// Microsoft and DigiCert Global Root G2/G3 anchors of webpki-roots) and intermediates.
    pub fn builtin() -> Self {
        let mut roots = Vec::new();
        for pem in BUILTIN_ROOTS {
            // Fixed at compile time and covered by tests.
            if let Ok(mut a) = anchors(pem, Path::new("built-in")) {
                roots.append(&mut a);
            }
        }
        for anchor in webpki_roots::TLS_SERVER_ROOTS {
            let subject = anchor.subject.as_ref();
            let wanted = [
                &b"Microsoft"[..],
                b"DigiCert Global Root G2",
                b"DigiCert Global Root G3",
            ];
            let is_wanted = wanted
                .iter()
                .any(|w| subject.windows(w.len()).any(|s| s == *w));
            if is_wanted && !roots.iter().any(|r| r.subject.as_ref() == subject) {
                roots.push(anchor.clone());
            }
        }
        let mut intermediates = Vec::new();
        for pem in BUILTIN_INTERMEDIATES {
            if let Ok(ders) = pem_ders(pem, Path::new("built-in")) {
                intermediates.extend(ders.into_iter().map(|(_, d)| CertificateDer::from(d)));
            }
        }
        AzureTrust {
            roots,
            intermediates,
        }
    }

    /// Only the anchors of a PEM bundle, and no extra intermediates.
    pub fn from_roots_pem(pem: &str) -> Result<Self, AzureTrustError> {
        Ok(AzureTrust {
            roots: anchors(pem, Path::new("roots"))?,
            intermediates: Vec::new(),
        })
    }

    /// Replaces the anchors with those of a PEM bundle (`--azure-roots`).
    pub fn replace_roots_pem(&mut self, pem: &str, origin: &Path) -> Result<(), AzureTrustError> {
        self.roots = anchors(pem, origin)?;
        Ok(())
    }

    /// Adds the intermediates of a PEM bundle (`--azure-intermediates`).
    pub fn add_intermediates_pem(
        &mut self,
        pem: &str,
        origin: &Path,
    ) -> Result<(), AzureTrustError> {
        for (_, der) in pem_ders(pem, origin)? {
            self.intermediates.push(CertificateDer::from(der));
        }
        Ok(())
    }

    /// The built-in trust, with roots replaced by the PEM file `roots` and intermediates added
    /// from the PEM file `intermediates`, as the server and CLI flags say.
    pub fn from_config(
        roots: Option<&Path>,
        intermediates: Option<&Path>,
    ) -> Result<Self, AzureTrustError> {
        let mut trust = Self::builtin();
        if let Some(path) = roots {
            trust.replace_roots_pem(&read(path)?, path)?;
        }
        if let Some(path) = intermediates {
            trust.add_intermediates_pem(&read(path)?, path)?;
        }
        Ok(trust)
    }

    /// How many trust anchors there are.
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }
}

/// Verifies Azure attested documents. Cheap to share (`Arc`) and `Sync`.
#[derive(Debug, Clone)]
pub struct AzureVerifier {
    trust: AzureTrust,
    clock: Arc<dyn Clock>,
}

/// The fields of an attested document instauth uses.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttestedDocument {
    vm_id: String,
    subscription_id: String,
    #[serde(default)]
    location: String,
    time_stamp: TimeStamp,
}

/// `timeStamp` of an attested document: `"04/19/22 01:27:21 -0000"` (month/day/year).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeStamp {
    created_on: String,
    expires_on: String,
}

/// Leeway for clock skew between Azure and this server when checking `timeStamp`.
pub const TIMESTAMP_LEEWAY_SECONDS: i64 = 60;

fn parse_timestamp(field: &str, value: &str) -> Result<DateTime<Utc>, AzureError> {
    DateTime::parse_from_str(value, "%m/%d/%y %H:%M:%S %z")
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AzureError::MalformedDocument {
            reason: format!("timeStamp.{field} is not MM/DD/YY HH:MM:SS ±ZZZZ"),
        })
}

fn unix_time(t: DateTime<Utc>) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(t.timestamp()).unwrap_or(0),
    ))
}

fn from_unix(t: UnixTime) -> DateTime<Utc> {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// True if `name` is one of [`ALLOWED_SIGNER_NAMES`] or a subdomain (a wildcard SAN such as
/// `*.metadata.azure.com` counts as a subdomain).
fn allowed_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    ALLOWED_SIGNER_NAMES.iter().any(|allowed| {
        name == *allowed
            || name
                .strip_suffix(allowed)
                .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1)
    })
}

fn dns_names(cert: &Certificate) -> Result<Vec<String>, AzureError> {
    let Some((_critical, san)) = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .map_err(|e| Pkcs7Error::Der(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .0
        .iter()
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.as_str().to_string()),
            _ => None,
        })
        .collect())
}

impl AzureVerifier {
    /// A verifier with `trust`, checking certificate validity at `clock`'s time.
    pub fn new(trust: AzureTrust, clock: Arc<dyn Clock>) -> Self {
        AzureVerifier { trust, clock }
    }

    /// Verifies a request body.
    pub fn verify(
        &self,
        req: &AzureInstanceIdentityRequest,
    ) -> Result<Verified<Identity>, AzureError> {
        if !req.encoding.is_empty() && !req.encoding.eq_ignore_ascii_case("pkcs7") {
            return Err(AzureError::UnsupportedEncoding {
                encoding: req.encoding.chars().take(32).collect(),
            });
        }
        if req.signature.trim().is_empty() {
            return Err(AzureError::MissingProof);
        }
        let body = decode_base64_lenient_whitespace(&req.signature)?;
        self.verify_pkcs7_der(&body)
    }

    /// Verifies a PKCS#7 body (DER or BER).
    pub fn verify_pkcs7_der(&self, body: &[u8]) -> Result<Verified<Identity>, AzureError> {
        let signed = UnverifiedSignedData::parse(body)?;
        let signer = signed.single_signer()?;
        let signer_cert = signed.signer_certificate(signer)?;

        // 1. Name, on the signer's certificate.
        let names = dns_names(&signer_cert.certificate)?;
        if !names.iter().any(|n| allowed_name(n)) {
            return Err(AzureError::UntrustedSignerName {
                names: names.into_iter().take(8).collect(),
            });
        }

        // 2. Chain, on the same certificate.
        let ee_der = CertificateDer::from(signer_cert.der.as_slice());
        let ee =
            webpki::EndEntityCert::try_from(&ee_der).map_err(|e| AzureError::UntrustedChain {
                reason: format!("{e:?}"),
            })?;
        let mut intermediates: Vec<CertificateDer<'_>> = signed
            .certificates()
            .iter()
            .filter(|c| c.der != signer_cert.der)
            .map(|c| CertificateDer::from(c.der.as_slice()))
            .collect();
        intermediates.extend(self.trust.intermediates.iter().cloned());
        let now = self.clock.now();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.trust.roots,
            &intermediates,
            unix_time(now),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { not_after, .. } => AzureError::CertificateExpired {
                now,
                not_after: from_unix(not_after),
            },
            webpki::Error::CertNotValidYet { not_before, .. } => {
                AzureError::CertificateNotYetValid {
                    now,
                    not_before: from_unix(not_before),
                }
            }
            other => AzureError::UntrustedChain {
                reason: format!("{other:?}"),
            },
        })?;

        // 3. Signature over the content, with that certificate's key.
        let key =
            RsaPublicKey::from_certificate(&signer_cert.certificate, false, "signer certificate")?;
        let content = signed.verify_signer(signer, &key, true)?;

        let doc: AttestedDocument =
            serde_json::from_slice(content).map_err(|e| AzureError::MalformedDocument {
                reason: format!(
                    "{:?} error at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            })?;
        if doc.vm_id.is_empty() {
            return Err(AzureError::MalformedDocument {
                reason: "vmId is empty".into(),
            });
        }
        // The document's own lifetime bounds replay of a captured proof to hours, where the
        // signer certificate alone would allow months.
        let leeway = chrono::Duration::seconds(TIMESTAMP_LEEWAY_SECONDS);
        let created_on = parse_timestamp("createdOn", &doc.time_stamp.created_on)?;
        let expires_on = parse_timestamp("expiresOn", &doc.time_stamp.expires_on)?;
        if now > expires_on + leeway {
            return Err(AzureError::DocumentExpired { now, expires_on });
        }
        if now + leeway < created_on {
            return Err(AzureError::DocumentNotYetValid { now, created_on });
        }
        Ok(Verified::__new_after_verification(Identity::Azure {
            instance_id: doc.vm_id,
            subscription_id: Some(doc.subscription_id),
            location: Some(doc.location).filter(|l| !l.is_empty()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subdomains() {
        assert!(allowed_name("metadata.azure.com"));
        assert!(allowed_name("southcentralus.metadata.azure.com"));
        assert!(allowed_name("*.metadata.azure.us"));
        assert!(allowed_name("METADATA.AZURE.CN."));
        assert!(!allowed_name("evilmetadata.azure.com"));
        assert!(!allowed_name("metadata.azure.com.evil.example"));
        assert!(!allowed_name(".metadata.azure.com"));
        assert!(!allowed_name("azure.com"));
    }

    #[test]
    fn builtin_trust_loads() {
        let t = AzureTrust::builtin();
        assert!(t.root_count() >= 2);
        assert_eq!(t.intermediates.len(), 2);
    }
}
