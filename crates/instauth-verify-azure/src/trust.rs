//! Azure trust material: the pinned roots and the issuing CAs, parsed once when loaded.

use std::path::Path;

use der::Decode;
use instauth_types::Provider;
use instauth_verify::trust::{parse_pem, TrustCertificate, TrustError, TrustRole, TrustSource};
use rustls_pki_types::{CertificateDer, TrustAnchor};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, SubjectKeyIdentifier};
use x509_cert::Certificate;

/// `(path under certs/, PEM)` of every built-in file.
macro_rules! builtin {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../certs/", $path)))),*]
    };
}

/// Azure's own anchors (certs/README.md says which generation needs which). Never the general
/// web PKI: only these may vouch for `metadata.azure.*`.
pub(crate) const BUILTIN_ROOTS: &[(&str, &str)] = builtin![
    "roots/baltimore-cybertrust-root.pem",
    "roots/digicert-global-root-g2.pem",
    "roots/microsoft-rsa-root-ca-2017.pem",
    "roots/microsoft-tls-rsa-root-g2.pem",
];

/// Every issuing CA generation seen in real attested documents, with the cross-signs.
pub(crate) const BUILTIN_INTERMEDIATES: &[(&str, &str)] = builtin![
    "intermediates/microsoft-azure-rsa-tls-issuing-ca-03-xsign-digicert-g2.pem",
    "intermediates/microsoft-azure-rsa-tls-issuing-ca-03.pem",
    "intermediates/microsoft-azure-rsa-tls-issuing-ca-04-xsign-digicert-g2.pem",
    "intermediates/microsoft-azure-rsa-tls-issuing-ca-04.pem",
    "intermediates/microsoft-azure-rsa-tls-issuing-ca-07-xsign-digicert-g2.pem",
    "intermediates/microsoft-azure-rsa-tls-issuing-ca-07.pem",
    "intermediates/microsoft-azure-rsa-tls-issuing-ca-08-xsign-digicert-g2.pem",
    "intermediates/microsoft-azure-rsa-tls-issuing-ca-08.pem",
    "intermediates/microsoft-azure-tls-issuing-ca-01.pem",
    "intermediates/microsoft-azure-tls-issuing-ca-05.pem",
    "intermediates/microsoft-it-tls-ca-1.pem",
    "intermediates/microsoft-it-tls-ca-2.pem",
    "intermediates/microsoft-it-tls-ca-4.pem",
    "intermediates/microsoft-it-tls-ca-5.pem",
    "intermediates/microsoft-rsa-tls-ca-01.pem",
    "intermediates/microsoft-rsa-tls-ca-02.pem",
    "intermediates/microsoft-tls-g2-rsa-ca-ocsp-02.pem",
    "intermediates/microsoft-tls-g2-rsa-ca-ocsp-04.pem",
    "intermediates/microsoft-tls-g2-rsa-ca-ocsp-06.pem",
    "intermediates/microsoft-tls-g2-rsa-ca-ocsp-08.pem",
    "intermediates/microsoft-tls-g2-rsa-ca-ocsp-10.pem",
    "intermediates/microsoft-tls-g2-rsa-ca-ocsp-12.pem",
    "intermediates/microsoft-tls-g2-rsa-ca-ocsp-14.pem",
    "intermediates/microsoft-tls-g2-rsa-ca-ocsp-16.pem",
    "intermediates/microsoft-tls-rsa-root-g2-xsign-digicert-g2.pem",
];

/// The fields path selection compares: raw subject and issuer names exactly as rustls-webpki
/// compares them (the DER contents of the `Name`), and the key identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    pub(crate) subject: Vec<u8>,
    pub(crate) issuer: Vec<u8>,
    /// Subject key identifier.
    pub(crate) ski: Option<Vec<u8>>,
    /// Authority key identifier (key id form).
    pub(crate) aki: Option<Vec<u8>>,
}

impl Names {
    /// Reads the names of `der` (parsed as `cert`). Fails if webpki cannot parse it, in which
    /// case webpki could not use it in a path either.
    pub(crate) fn of(der: &[u8], cert: &Certificate) -> Result<Self, String> {
        let cert_der = CertificateDer::from(der);
        let parsed = webpki::EndEntityCert::try_from(&cert_der).map_err(|e| format!("{e:?}"))?;
        let tbs = &cert.tbs_certificate;
        let ski = tbs
            .get::<SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .map(|(_, ski)| ski.0.as_bytes().to_vec());
        let aki = tbs
            .get::<AuthorityKeyIdentifier>()
            .ok()
            .flatten()
            .and_then(|(_, aki)| aki.key_identifier.map(|k| k.as_bytes().to_vec()));
        Ok(Names {
            subject: parsed.subject().to_vec(),
            issuer: parsed.issuer().to_vec(),
            ski,
            aki,
        })
    }

    /// Whether a CA with `subject` and key identifier `ski` may have issued this certificate.
    /// Key identifiers only narrow the choice when both sides have one (RFC 5280 §4.2.1.1);
    /// the signature check in webpki decides.
    pub(crate) fn may_be_issued_by(&self, subject: &[u8], ski: Option<&[u8]>) -> bool {
        self.issuer == subject
            && match (self.aki.as_deref(), ski) {
                (Some(aki), Some(ski)) => aki == ski,
                _ => true,
            }
    }

    /// Subject equals issuer: a self-issued certificate, which a proof's bag never needs.
    pub(crate) fn is_self_issued(&self) -> bool {
        self.subject == self.issuer
    }
}

/// A CA certificate path building may use.
#[derive(Debug, Clone)]
pub(crate) struct CaCert {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) names: Names,
}

impl CaCert {
    /// Parses a certificate (not yet trusted for anything).
    pub(crate) fn parse(der: Vec<u8>) -> Result<(Self, Certificate), String> {
        let cert = Certificate::from_der(&der).map_err(|e| e.to_string())?;
        let names = Names::of(&der, &cert)?;
        Ok((
            CaCert {
                der: CertificateDer::from(der),
                names,
            },
            cert,
        ))
    }

    /// Its listing entry, as an issuing CA from `source`.
    pub(crate) fn describe(&self, cert: &Certificate, source: TrustSource) -> TrustCertificate {
        TrustCertificate::from_parsed(
            Provider::Azure,
            cert,
            &self.der,
            source,
            TrustRole::Intermediate,
            true,
        )
    }
}

/// An issuing CA of the trust material, with its listing entry.
#[derive(Debug, Clone)]
pub(crate) struct TrustedCa {
    pub(crate) ca: CaCert,
    pub(crate) info: TrustCertificate,
}

impl TrustedCa {
    fn parse(der: Vec<u8>, source: TrustSource) -> Result<Self, String> {
        let (ca, cert) = CaCert::parse(der)?;
        let info = ca.describe(&cert, source);
        Ok(TrustedCa { ca, info })
    }
}

/// A trust anchor with the subject key identifier of its certificate.
#[derive(Debug, Clone)]
pub(crate) struct Root {
    pub(crate) anchor: TrustAnchor<'static>,
    pub(crate) ski: Option<Vec<u8>>,
    pub(crate) info: TrustCertificate,
}

impl Root {
    fn parse(der: &[u8], source: TrustSource) -> Result<Self, String> {
        let cert = Certificate::from_der(der).map_err(|e| e.to_string())?;
        let cert_der = CertificateDer::from(der);
        let anchor = webpki::anchor_from_trusted_cert(&cert_der)
            .map_err(|e| format!("{e:?}"))?
            .to_owned();
        let ski = cert
            .tbs_certificate
            .get::<SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .map(|(_, ski)| ski.0.as_bytes().to_vec());
        let info = TrustCertificate::from_parsed(
            Provider::Azure,
            &cert,
            der,
            source,
            TrustRole::Root,
            true,
        );
        Ok(Root { anchor, ski, info })
    }

    pub(crate) fn subject(&self) -> &[u8] {
        self.anchor.subject.as_ref()
    }
}

/// Trust anchors and issuing CAs for Azure signer certificates.
///
/// [`AzureTrust::builtin`] is every certificate of `certs/` (see its README);
/// [`AzureTrust::from_config`] applies `--azure-roots` (replaces the anchors) and
/// `--azure-intermediates` (adds issuing CAs).
#[derive(Debug, Clone)]
pub struct AzureTrust {
    pub(crate) roots: Vec<Root>,
    pub(crate) intermediates: Vec<TrustedCa>,
}

/// Every certificate of a PEM bundle from `origin`, parsed by `parse`; none is an error.
fn load<T>(
    pem: &str,
    origin: &Path,
    parse: impl Fn(Vec<u8>) -> Result<T, String>,
) -> Result<Vec<T>, TrustError> {
    let certs = parse_pem(pem, origin)?;
    if certs.is_empty() {
        return Err(TrustError::Empty {
            path: origin.to_path_buf(),
        });
    }
    certs
        .into_iter()
        .map(|c| {
            parse(c.der).map_err(|reason| TrustError::BadCertificate {
                path: origin.to_path_buf(),
                line: c.line,
                reason,
            })
        })
        .collect()
}

fn roots_of(pem: &str, origin: &Path, source: &TrustSource) -> Result<Vec<Root>, TrustError> {
    load(pem, origin, |der| {
        Root::parse(&der, source.clone()).map_err(|r| format!("not a usable trust anchor: {r}"))
    })
}

fn intermediates_of(
    pem: &str,
    origin: &Path,
    source: &TrustSource,
) -> Result<Vec<TrustedCa>, TrustError> {
    load(pem, origin, |der| TrustedCa::parse(der, source.clone()))
}

impl AzureTrust {
    /// The built-in roots and issuing CAs (`certs/`).
    pub fn builtin() -> Self {
        let mut trust = AzureTrust {
            roots: Vec::new(),
            intermediates: Vec::new(),
        };
        // The built-in files are fixed at compile time and a unit test loads each one; a file
        // that failed would be skipped rather than take the server down.
        for (path, pem) in BUILTIN_ROOTS {
            if let Ok(mut roots) = roots_of(pem, Path::new(path), &TrustSource::BuiltIn) {
                trust.roots.append(&mut roots);
            }
        }
        for (path, pem) in BUILTIN_INTERMEDIATES {
            if let Ok(mut cas) = intermediates_of(pem, Path::new(path), &TrustSource::BuiltIn) {
                trust.intermediates.append(&mut cas);
            }
        }
        trust
    }

    /// Only the anchors of a PEM bundle, and no issuing CAs (tests, and operators who pin
    /// everything themselves). Listed with the source `(in memory)`.
    pub fn from_roots_pem(pem: &str) -> Result<Self, TrustError> {
        let origin = Path::new("(in memory)");
        Ok(AzureTrust {
            roots: roots_of(pem, origin, &TrustSource::File(origin.to_path_buf()))?,
            intermediates: Vec::new(),
        })
    }

    /// Replaces the anchors with those of a PEM bundle (`--azure-roots`) read from `origin`.
    pub fn replace_roots_pem(&mut self, pem: &str, origin: &Path) -> Result<(), TrustError> {
        self.roots = roots_of(pem, origin, &TrustSource::File(origin.to_path_buf()))?;
        Ok(())
    }

    /// Adds the issuing CAs of a PEM bundle (`--azure-intermediates`) read from `origin`.
    pub fn add_intermediates_pem(&mut self, pem: &str, origin: &Path) -> Result<(), TrustError> {
        let mut cas = intermediates_of(pem, origin, &TrustSource::File(origin.to_path_buf()))?;
        self.intermediates.append(&mut cas);
        Ok(())
    }

    /// The built-in trust, with the anchors replaced by the PEM file `roots` and issuing CAs
    /// added from the PEM file `intermediates`, as the server and CLI flags say. Call it again
    /// to re-read the files (SIGHUP) and hand the result to
    /// [`AzureVerifier::replace_trust`](crate::AzureVerifier::replace_trust).
    pub fn from_config(
        roots: Option<&Path>,
        intermediates: Option<&Path>,
    ) -> Result<Self, TrustError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TrustError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
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

    /// How many issuing CAs there are (built-in and configured; not fetched ones).
    pub fn intermediate_count(&self) -> usize {
        self.intermediates.len()
    }

    /// Every root and issuing CA, for `instauth trust list` and the expiry metric.
    pub fn trust_certificates(&self) -> Vec<TrustCertificate> {
        self.roots
            .iter()
            .map(|r| r.info.clone())
            .chain(self.intermediates.iter().map(|c| c.info.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_file_loads_and_is_in_the_readme() {
        let t = AzureTrust::builtin();
        assert_eq!(t.root_count(), BUILTIN_ROOTS.len());
        assert_eq!(t.intermediate_count(), BUILTIN_INTERMEDIATES.len());
        let on_disk = |dir: &str| {
            std::fs::read_dir(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("certs")
                    .join(dir),
            )
            .unwrap()
            .count()
        };
        assert_eq!(on_disk("roots"), BUILTIN_ROOTS.len());
        assert_eq!(on_disk("intermediates"), BUILTIN_INTERMEDIATES.len());
        let readme = include_str!("../certs/README.md");
        for (path, _) in BUILTIN_ROOTS.iter().chain(BUILTIN_INTERMEDIATES) {
            assert!(
                readme.contains(&format!("`{path}`")),
                "{path} not in README"
            );
        }
        for info in t.trust_certificates() {
            assert!(
                readme.contains(&info.sha256),
                "{} not in README",
                info.subject
            );
            assert!(info.expiry_checked);
            assert_eq!(info.source, TrustSource::BuiltIn);
        }
    }

    #[test]
    fn roots_are_azures_own_anchors_only() {
        let t = AzureTrust::builtin();
        let mut subjects: Vec<_> = t.roots.iter().map(|r| r.info.subject.clone()).collect();
        subjects.sort();
        assert_eq!(
            subjects,
            [
                "CN=Baltimore CyberTrust Root,OU=CyberTrust,O=Baltimore,C=IE",
                "CN=DigiCert Global Root G2,OU=www.digicert.com,O=DigiCert Inc,C=US",
                "CN=Microsoft RSA Root Certificate Authority 2017,O=Microsoft Corporation,C=US",
                "CN=Microsoft TLS RSA Root G2,O=Microsoft Corporation,C=US",
            ]
        );
    }

    #[test]
    fn key_identifiers_narrow_issuer_candidates() {
        let mut n = Names {
            subject: b"leaf".to_vec(),
            issuer: b"ca".to_vec(),
            ski: None,
            aki: Some(vec![1]),
        };
        assert!(n.may_be_issued_by(b"ca", Some(&[1])));
        assert!(n.may_be_issued_by(b"ca", None));
        assert!(!n.may_be_issued_by(b"ca", Some(&[2])));
        assert!(!n.may_be_issued_by(b"other", Some(&[1])));
        n.aki = None;
        assert!(n.may_be_issued_by(b"ca", Some(&[2])));
        assert!(!n.is_self_issued());
    }
}
