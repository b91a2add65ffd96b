//! AWS instance identity document verifier.
//!
//! Two proof formats (SPEC §2):
//! - `signature`: RSA PKCS#1 v1.5 / SHA-256 over the exact bytes of `document`, checked with the
//!   region's RSA-1024 certificate (or the legacy `default` one);
//! - `pkcs7` (`/dynamic/instance-identity/rsa2048`): PKCS#7 `SignedData` with signed attributes,
//!   checked with the region's RSA-2048 certificate. The identity is read from its content; a
//!   non-empty `document` must equal that content byte for byte.
//!
//! The region is read from the signed document before it is verified, only to choose the key;
//! the [`Identity`] is built from the same bytes after the signature over them verified.
//! AWS certificate validity dates are ignored on purpose: AWS still signs with keys whose
//! certificates expired (DESIGN.md, "Trust material").
//!
//! ```no_run
//! # fn demo(req: &instauth_types::AwsInstanceIdentityRequest) -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = instauth_verify_aws::AwsVerifier::from_config(None)?; // built-in certificates
//! let identity = verifier.verify(req)?;
//! println!("{}", identity.instance_id());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use der::Decode;
use instauth_types::AwsInstanceIdentityRequest;
use instauth_types::Provider;
use instauth_verify::encoding::{decode_base64_lenient_whitespace, json_error_reason, Base64Error};
use instauth_verify::pem::parse_certificates;
use instauth_verify::pkcs7::{Pkcs7Error, RsaPublicKey, UnverifiedSignedData};
use instauth_verify::trust::{parse_pem, TrustCertificate, TrustError, TrustRole, TrustSource};
use instauth_verify::{Identity, Verified};
use serde::Deserialize;
use x509_cert::Certificate;

mod builtin;

/// The region name that selects the fallback certificate.
pub const DEFAULT_REGION: &str = "default";

/// Why an AWS proof was rejected. No variant carries signature or document bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    /// Neither `pkcs7` nor `document` + `signature` was given.
    #[error("no proof: give `pkcs7`, or `document` and `signature`")]
    MissingProof,
    /// A base64 field does not decode.
    #[error("field `{field}` is {source}")]
    Base64 {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        source: Base64Error,
    },
    /// The PKCS#7 body is malformed or its signature does not verify.
    #[error(transparent)]
    Pkcs7(#[from] Pkcs7Error),
    /// The identity document is not the JSON AWS signs.
    #[error("identity document is not valid: {reason}")]
    MalformedDocument {
        /// Which part is wrong (never the document's text).
        reason: String,
    },
    /// The document names a region without a configured certificate.
    #[error("unsupported region \"{region}\": no AWS certificate for it and no default (add one with --aws-certificates)")]
    UnsupportedRegion {
        /// The region from the document.
        region: String,
    },
    /// The detached signature does not verify with the region's certificate(s).
    #[error("signature does not verify with the AWS certificate for region \"{region}\"")]
    BadSignature {
        /// The region whose certificate was used.
        region: String,
    },
    /// `document` and the PKCS#7 content differ.
    #[error("`document` differs from the signed PKCS#7 content")]
    DocumentMismatch,
}

/// The keys trusted for one region.
#[derive(Debug, Clone, Default)]
struct RegionKeys {
    /// For the `signature` format: RSA ≥ 1024 bits.
    signature: Vec<RsaPublicKey>,
    /// For the `rsa2048` format: RSA ≥ 2048 bits.
    rsa2048: Vec<RsaPublicKey>,
}

/// Region → certificate maps for both formats. Built-in ones, replaced per region by configured
/// ones. Keys are parsed once here, not per verification.
#[derive(Debug, Clone, Default)]
pub struct AwsCertificates {
    builtin: BTreeMap<String, RegionKeys>,
    configured: BTreeMap<String, RegionKeys>,
    /// Every certificate loaded, built-in and configured, for [`Self::trust_certificates`].
    listing: Vec<TrustCertificate>,
}

/// The listing entry of an AWS region certificate: only its key is used, so its validity is
/// not checked (`expiry_checked = false`).
fn listing_entry(
    cert: &Certificate,
    der: &[u8],
    region: &str,
    source: TrustSource,
) -> TrustCertificate {
    let mut entry = TrustCertificate::from_parsed(
        Provider::Aws,
        cert,
        der,
        source,
        TrustRole::RegionCertificate,
        false,
    );
    entry.region = Some(region.to_string());
    entry
}

impl AwsCertificates {
    /// No certificates at all (tests, or operators who want only their own).
    pub fn empty() -> Self {
        Self::default()
    }

    /// The certificates AWS publishes, compiled in (`certs/`).
    pub fn builtin() -> Self {
        let mut builtin: BTreeMap<String, RegionKeys> = BTreeMap::new();
        let mut listing = Vec::new();
        for (format_2048, table) in [(false, builtin::RSA1024), (true, builtin::RSA2048)] {
            for (region, pem) in table {
                // The built-in files are fixed at compile time and covered by tests; a file
                // that failed to parse would be skipped rather than take the server down.
                let Ok(certs) = parse_certificates(pem) else {
                    continue;
                };
                for cert in certs {
                    let Ok(parsed) = Certificate::from_der(&cert.der) else {
                        continue;
                    };
                    let label = format!("{region} region");
                    let entry = builtin.entry((*region).to_string()).or_default();
                    let Ok(key) = RsaPublicKey::from_certificate(&parsed, !format_2048, label)
                    else {
                        continue;
                    };
                    // A region key checks every proof of its region: set it up once.
                    let key = key.prepared();
                    listing.push(listing_entry(
                        &parsed,
                        &cert.der,
                        region,
                        TrustSource::BuiltIn,
                    ));
                    if format_2048 {
                        entry.rsa2048.push(key);
                    } else {
                        entry.signature.push(key);
                    }
                }
            }
        }
        AwsCertificates {
            builtin,
            configured: BTreeMap::new(),
            listing,
        }
    }

    /// Adds the certificates of a PEM text. Each belongs to the region of the `# region: NAME`
    /// comment before it, else to `file_region` (the `NAME` of a `NAME.pem` file). A region
    /// given here replaces the built-in certificates of that region, for both formats.
    /// Returns how many certificates were added.
    pub fn add_pem(
        &mut self,
        pem: &str,
        file_region: Option<&str>,
        origin: &Path,
    ) -> Result<usize, TrustError> {
        let certs = parse_pem(pem, origin)?;
        let count = certs.len();
        for cert in certs {
            let region = cert
                .region
                .clone()
                .or_else(|| file_region.map(str::to_string))
                .filter(|r| !r.is_empty())
                .ok_or_else(|| TrustError::NoRegion {
                    path: origin.to_path_buf(),
                    line: cert.line,
                })?;
            let bad = |reason: String| TrustError::BadCertificate {
                path: origin.to_path_buf(),
                line: cert.line,
                reason,
            };
            let parsed = Certificate::from_der(&cert.der).map_err(|e| bad(e.to_string()))?;
            let label = format!("{region} region (configured)");
            let signature = RsaPublicKey::from_certificate(&parsed, true, label.clone())
                .map_err(|e| bad(e.to_string()))?
                .prepared();
            let rsa2048 = RsaPublicKey::from_certificate(&parsed, false, label)
                .map_err(|e| bad(e.to_string()))?
                .prepared();
            self.listing.push(listing_entry(
                &parsed,
                &cert.der,
                &region,
                TrustSource::File(origin.to_path_buf()),
            ));
            let entry = self.configured.entry(region).or_default();
            entry.signature.push(signature);
            entry.rsa2048.push(rsa2048);
        }
        Ok(count)
    }

    /// Adds a PEM file, or every `*.pem` / `*.crt` file of a directory (see [`Self::add_pem`];
    /// a file's name without extension is its default region).
    pub fn add_path(&mut self, path: &Path) -> Result<usize, TrustError> {
        let io = |source| TrustError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mut files = Vec::new();
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(io)? {
                let p = entry.map_err(io)?.path();
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
                if p.is_file() && (ext == "pem" || ext == "crt") {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut count = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| TrustError::Io {
                path: file.clone(),
                source,
            })?;
            let stem = file.file_stem().and_then(|s| s.to_str());
            count += self.add_pem(&text, stem, &file)?;
        }
        if count == 0 {
            return Err(TrustError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(count)
    }

    /// Configured certificates of the region win over built-in ones; then the configured
    /// `default`, then the built-in `default`.
    fn keys_for(&self, region: &str) -> Option<&RegionKeys> {
        self.configured
            .get(region)
            .or_else(|| self.builtin.get(region))
            .or_else(|| self.configured.get(DEFAULT_REGION))
            .or_else(|| self.builtin.get(DEFAULT_REGION))
    }

    /// Every built-in and configured certificate, in load order. Their validity is not
    /// checked (`expiry_checked = false`): AWS signs with keys whose certificates expired.
    pub fn trust_certificates(&self) -> &[TrustCertificate] {
        &self.listing
    }

    /// The regions with a certificate (built-in or configured), sorted.
    pub fn regions(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .builtin
            .keys()
            .chain(self.configured.keys())
            .map(String::as_str)
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Verifies AWS instance identity proofs. Cheap to share (`Arc`) and `Sync`.
#[derive(Debug, Clone)]
pub struct AwsVerifier {
    certificates: AwsCertificates,
}

/// The fields of an identity document instauth uses. Parsed from bytes that are not yet
/// verified: the region picks a key, nothing else is read until the signature checked out.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    instance_id: String,
    account_id: String,
    region: String,
}

/// An identity document whose signature has not been checked.
#[derive(Debug)]
struct UnverifiedDocument {
    document: Document,
}

impl UnverifiedDocument {
    fn parse(bytes: &[u8]) -> Result<Self, AwsError> {
        let document: Document =
            serde_json::from_slice(bytes).map_err(|e| AwsError::MalformedDocument {
                reason: json_error_reason(&e),
            })?;
        if document.instance_id.is_empty() {
            return Err(AwsError::MalformedDocument {
                reason: "instanceId is empty".into(),
            });
        }
        if !valid_region_name(&document.region) {
            return Err(AwsError::MalformedDocument {
                reason: "region is not a region name".into(),
            });
        }
        Ok(UnverifiedDocument { document })
    }

    fn region(&self) -> &str {
        &self.document.region
    }

    /// Called only once the signature over the bytes this was parsed from has verified.
    fn into_verified(self) -> Verified<Identity> {
        let d = self.document;
        Verified::__new_after_verification(Identity::Aws {
            instance_id: d.instance_id,
            account_id: d.account_id,
            region: d.region,
        })
    }
}

/// AWS region names are short lowercase words and digits joined by `-`; anything else is
/// refused before it reaches an error message or a map lookup.
fn valid_region_name(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl AwsVerifier {
    /// A verifier trusting `certificates`.
    pub fn new(certificates: AwsCertificates) -> Self {
        AwsVerifier { certificates }
    }

    /// The built-in certificates, plus/overridden by the PEM file or directory `extra`
    /// (`--aws-certificates`).
    pub fn from_config(extra: Option<&Path>) -> Result<Self, TrustError> {
        let mut certificates = AwsCertificates::builtin();
        if let Some(path) = extra {
            certificates.add_path(path)?;
        }
        Ok(Self::new(certificates))
    }

    /// The trusted certificates.
    pub fn certificates(&self) -> &AwsCertificates {
        &self.certificates
    }

    /// Every trusted certificate, for `instauth trust list` (see
    /// [`AwsCertificates::trust_certificates`]).
    pub fn trust_certificates(&self) -> &[TrustCertificate] {
        self.certificates.trust_certificates()
    }

    /// Verifies a request body: the PKCS#7 when `pkcs7` is present and non-empty, else the
    /// detached signature over `document`.
    pub fn verify(&self, req: &AwsInstanceIdentityRequest) -> Result<Verified<Identity>, AwsError> {
        match req.pkcs7.as_deref() {
            Some(p7) if !p7.trim().is_empty() => self.verify_pkcs7(p7, req.document.as_bytes()),
            _ => {
                if req.document.is_empty() || req.signature.trim().is_empty() {
                    return Err(AwsError::MissingProof);
                }
                self.verify_signature(req.document.as_bytes(), &req.signature)
            }
        }
    }

    /// Verifies the `signature` format: `signature_b64` over the exact `document` bytes.
    pub fn verify_signature(
        &self,
        document: &[u8],
        signature_b64: &str,
    ) -> Result<Verified<Identity>, AwsError> {
        let signature =
            decode_base64_lenient_whitespace(signature_b64).map_err(|source| AwsError::Base64 {
                field: "signature",
                source,
            })?;
        let unverified = UnverifiedDocument::parse(document)?;
        let keys = self.region_keys(unverified.region())?;
        if keys
            .signature
            .iter()
            .any(|key| key.verify(document, &signature).is_ok())
        {
            Ok(unverified.into_verified())
        } else {
            Err(AwsError::BadSignature {
                region: unverified.region().to_string(),
            })
        }
    }

    /// Verifies the `rsa2048` format (base64 PKCS#7). A non-empty `document` must equal the
    /// signed content byte for byte.
    pub fn verify_pkcs7(
        &self,
        pkcs7_b64: &str,
        document: &[u8],
    ) -> Result<Verified<Identity>, AwsError> {
        let body =
            decode_base64_lenient_whitespace(pkcs7_b64).map_err(|source| AwsError::Base64 {
                field: "pkcs7",
                source,
            })?;
        let signed = UnverifiedSignedData::parse(&body)?;
        let signer = signed.single_signer()?;
        if !document.is_empty() && document != signed.unverified_content() {
            return Err(AwsError::DocumentMismatch);
        }
        let unverified = UnverifiedDocument::parse(signed.unverified_content())?;
        let keys = self.region_keys(unverified.region())?;
        let mut last = None;
        for key in &keys.rsa2048 {
            match signed.verify_signer(signer, key, false) {
                Ok(_) => return Ok(unverified.into_verified()),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => AwsError::Pkcs7(e),
            None => AwsError::UnsupportedRegion {
                region: unverified.region().to_string(),
            },
        })
    }

    fn region_keys(&self, region: &str) -> Result<&RegionKeys, AwsError> {
        self.certificates
            .keys_for(region)
            .ok_or_else(|| AwsError::UnsupportedRegion {
                region: region.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_certificate_loads() {
        let certs = AwsCertificates::builtin();
        let files = builtin::RSA1024.len() + builtin::RSA2048.len();
        let loaded: usize = certs
            .builtin
            .values()
            .map(|k| k.signature.len() + k.rsa2048.len())
            .sum();
        assert_eq!(loaded, files);
        assert_eq!(certs.trust_certificates().len(), files);
        assert!(certs
            .trust_certificates()
            .iter()
            .all(|c| !c.expiry_checked && c.region.is_some() && c.source == TrustSource::BuiltIn));
        assert!(certs.regions().contains(&"us-west-2"));
        assert!(certs.regions().contains(&DEFAULT_REGION));
    }

    #[test]
    fn region_names_are_restricted() {
        assert!(valid_region_name("us-gov-west-1"));
        assert!(!valid_region_name("US"));
        assert!(!valid_region_name("us east"));
        assert!(!valid_region_name(""));
    }
}
