//! Reading and checking PKCS#7 / CMS `SignedData` (RFC 5652) for AWS `rsa2048` and Azure.
//!
//! Deliberately small: one encapsulated `id-data` content, RSA PKCS#1 v1.5 with SHA-256 only,
//! signer certificates located through `SignerInfo` (issuer and serial number). The callers
//! decide which key to trust (AWS: the region certificate; Azure: the signer certificate after
//! its chain and name checks); this module never trusts a certificate by itself.

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use const_oid::db::rfc5911::{ID_CONTENT_TYPE, ID_DATA, ID_MESSAGE_DIGEST, ID_SIGNED_DATA};
use const_oid::db::rfc5912::ID_SHA_256;
use const_oid::db::rfc5912::{RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION};
use const_oid::ObjectIdentifier;
use der::asn1::OctetString;
use der::{Decode, Encode};
use x509_cert::Certificate;

use std::sync::Arc;

use crate::ber::{ber_to_der, BerError};
use crate::prepared::Prepared;

/// Why a PKCS#7 body was rejected. Variants name the failed check; none carries signature,
/// key or content bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs7Error {
    /// The body is not well-formed BER.
    #[error("malformed PKCS#7: {0}")]
    Ber(#[from] BerError),
    /// The body is well-formed BER but not a PKCS#7 structure we understand.
    #[error("malformed PKCS#7: {0}")]
    Der(String),
    /// The outer content type is not `signedData`.
    #[error("PKCS#7 content type is {actual}, expected signedData")]
    NotSignedData {
        /// The content type found.
        actual: ObjectIdentifier,
    },
    /// The signed content type is not `data`.
    #[error("PKCS#7 signed content type is {actual}, expected data")]
    NotData {
        /// The content type found.
        actual: ObjectIdentifier,
    },
    /// The content is detached; instance identity proofs always carry it.
    #[error("PKCS#7 carries no content")]
    NoContent,
    /// Exactly one signer is required.
    #[error("PKCS#7 has {count} signers, expected exactly one")]
    SignerCount {
        /// How many `SignerInfo`s there are.
        count: usize,
    },
    /// The signer is named by subject key identifier, which these clouds do not use.
    #[error("PKCS#7 signer is not identified by issuer and serial number")]
    UnsupportedSignerIdentifier,
    /// No certificate in the bag matches the signer's issuer and serial number.
    #[error("PKCS#7 signer certificate (issuer and serial of the SignerInfo) is not in the certificate bag")]
    SignerCertificateNotFound,
    /// Several certificates match the signer's issuer and serial number.
    #[error("PKCS#7 certificate bag holds {count} certificates matching the signer")]
    AmbiguousSignerCertificate {
        /// How many match.
        count: usize,
    },
    /// The signer's digest algorithm is not SHA-256.
    #[error("unsupported PKCS#7 digest algorithm {oid}")]
    UnsupportedDigestAlgorithm {
        /// The algorithm found.
        oid: ObjectIdentifier,
    },
    /// The signer's signature algorithm is not RSA with SHA-256.
    #[error("unsupported PKCS#7 signature algorithm {oid}")]
    UnsupportedSignatureAlgorithm {
        /// The algorithm found.
        oid: ObjectIdentifier,
    },
    /// The key is not an RSA key.
    #[error("signer key algorithm is {oid}, expected rsaEncryption")]
    NotRsaKey {
        /// The algorithm found.
        oid: ObjectIdentifier,
    },
    /// Signed attributes lack a single-valued attribute RFC 5652 requires.
    #[error("PKCS#7 signed attributes lack a single {attribute} value")]
    MissingSignedAttribute {
        /// `messageDigest` or `contentType`.
        attribute: &'static str,
    },
    /// The `contentType` signed attribute is not `data`.
    #[error("PKCS#7 contentType attribute does not match the content")]
    ContentTypeMismatch,
    /// The `messageDigest` signed attribute is not the SHA-256 of the content.
    #[error("PKCS#7 messageDigest attribute does not match the SHA-256 of the content")]
    MessageDigestMismatch,
    /// The RSA signature does not verify with the key.
    #[error("PKCS#7 signature does not verify with the {key} key")]
    BadSignature {
        /// Which key was used (e.g. "us-east-1 region", "signer certificate").
        key: String,
    },
}

fn der_err(e: der::Error) -> Pkcs7Error {
    Pkcs7Error::Der(e.to_string())
}

/// A certificate from the PKCS#7 certificate bag, parsed and as DER.
#[derive(Debug, Clone)]
pub struct BagCertificate {
    /// The parsed certificate.
    pub certificate: Certificate,
    /// Its DER encoding.
    pub der: Vec<u8>,
}

/// A parsed, NOT yet verified `SignedData`.
#[derive(Debug, Clone)]
pub struct UnverifiedSignedData {
    content: Vec<u8>,
    certificates: Vec<BagCertificate>,
    signers: Vec<SignerInfo>,
}

impl UnverifiedSignedData {
    /// Parses a BER or DER `ContentInfo` holding `SignedData` over `id-data` content.
    pub fn parse(body: &[u8]) -> Result<Self, Pkcs7Error> {
        // Most bodies (Azure's) are DER already; only BER ones (AWS's) pay for normalising.
        let info = match ContentInfo::from_der(body) {
            Ok(info) => info,
            Err(_) => ContentInfo::from_der(&ber_to_der(body)?).map_err(der_err)?,
        };
        if info.content_type != ID_SIGNED_DATA {
            return Err(Pkcs7Error::NotSignedData {
                actual: info.content_type,
            });
        }
        let signed: SignedData = info.content.decode_as().map_err(der_err)?;
        let encap = signed.encap_content_info;
        if encap.econtent_type != ID_DATA {
            return Err(Pkcs7Error::NotData {
                actual: encap.econtent_type,
            });
        }
        let content = encap
            .econtent
            .ok_or(Pkcs7Error::NoContent)?
            .decode_as::<OctetString>()
            .map_err(der_err)?
            .into_bytes();
        let mut certificates = Vec::new();
        if let Some(set) = signed.certificates {
            for choice in set.0.into_vec() {
                // Attribute and "other" certificate formats cannot be signers; skip them.
                if let CertificateChoices::Certificate(certificate) = choice {
                    let der = certificate.to_der().map_err(der_err)?;
                    certificates.push(BagCertificate { certificate, der });
                }
            }
        }
        Ok(UnverifiedSignedData {
            content,
            certificates,
            signers: signed.signer_infos.0.into_vec(),
        })
    }

    /// The signed content. Untrusted until a signer has been verified.
    pub fn unverified_content(&self) -> &[u8] {
        &self.content
    }

    /// The certificate bag (order not significant).
    pub fn certificates(&self) -> &[BagCertificate] {
        &self.certificates
    }

    /// The only signer; more or fewer is an error (a second signer could vouch for nothing we
    /// check, and accepting "any of" is how peers were bitten).
    pub fn single_signer(&self) -> Result<&SignerInfo, Pkcs7Error> {
        match self.signers.as_slice() {
            [one] => Ok(one),
            other => Err(Pkcs7Error::SignerCount { count: other.len() }),
        }
    }

    /// The one certificate of the bag named by the signer's issuer and serial number.
    pub fn signer_certificate(&self, signer: &SignerInfo) -> Result<&BagCertificate, Pkcs7Error> {
        let SignerIdentifier::IssuerAndSerialNumber(ias) = &signer.sid else {
            return Err(Pkcs7Error::UnsupportedSignerIdentifier);
        };
        let issuer = ias.issuer.to_der().map_err(der_err)?;
        let mut found = Vec::new();
        for bag in &self.certificates {
            let tbs = &bag.certificate.tbs_certificate;
            if tbs.serial_number == ias.serial_number
                && tbs.issuer.to_der().map_err(der_err)? == issuer
            {
                found.push(bag);
            }
        }
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(Pkcs7Error::SignerCertificateNotFound),
            more => Err(Pkcs7Error::AmbiguousSignerCertificate { count: more.len() }),
        }
    }

    /// Checks `signer`'s signature over the content with `key`, then returns the content.
    ///
    /// `allow_rsa_as_digest` accepts `digestAlgorithm = sha256WithRSAEncryption`, which Azure
    /// uses (without signed attributes); it is treated as SHA-256.
    pub fn verify_signer(
        &self,
        signer: &SignerInfo,
        key: &RsaPublicKey,
        allow_rsa_as_digest: bool,
    ) -> Result<&[u8], Pkcs7Error> {
        let digest_oid = signer.digest_alg.oid;
        let digest_ok = digest_oid == ID_SHA_256
            || (allow_rsa_as_digest
                && digest_oid == SHA_256_WITH_RSA_ENCRYPTION
                && signer.signed_attrs.is_none());
        if !digest_ok {
            return Err(Pkcs7Error::UnsupportedDigestAlgorithm { oid: digest_oid });
        }
        let sig_oid = signer.signature_algorithm.oid;
        if sig_oid != RSA_ENCRYPTION && sig_oid != SHA_256_WITH_RSA_ENCRYPTION {
            return Err(Pkcs7Error::UnsupportedSignatureAlgorithm { oid: sig_oid });
        }
        let signature = signer.signature.as_bytes();
        match &signer.signed_attrs {
            None => key.verify(&self.content, signature)?,
            Some(attrs) => {
                let content_type = single_attribute(attrs, ID_CONTENT_TYPE, "contentType")?
                    .decode_as::<ObjectIdentifier>()
                    .map_err(der_err)?;
                if content_type != ID_DATA {
                    return Err(Pkcs7Error::ContentTypeMismatch);
                }
                let digest = single_attribute(attrs, ID_MESSAGE_DIGEST, "messageDigest")?
                    .decode_as::<OctetString>()
                    .map_err(der_err)?;
                let actual = ring::digest::digest(&ring::digest::SHA256, &self.content);
                if digest.as_bytes() != actual.as_ref() {
                    return Err(Pkcs7Error::MessageDigestMismatch);
                }
                // RFC 5652 §5.4: the signature covers the DER of the attributes as a SET OF,
                // not with the [0] IMPLICIT tag they travel under.
                let signed = attrs.to_der().map_err(der_err)?;
                key.verify(&signed, signature)?;
            }
        }
        Ok(&self.content)
    }
}

fn single_attribute<'a>(
    attrs: &'a x509_cert::attr::Attributes,
    oid: ObjectIdentifier,
    name: &'static str,
) -> Result<&'a der::Any, Pkcs7Error> {
    let mut matching = attrs.iter().filter(|a| a.oid == oid);
    let (Some(attr), None) = (matching.next(), matching.next()) else {
        return Err(Pkcs7Error::MissingSignedAttribute { attribute: name });
    };
    let mut values = attr.values.iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v),
        _ => Err(Pkcs7Error::MissingSignedAttribute { attribute: name }),
    }
}

/// An RSA public key, parsed once, with the PKCS#1 v1.5 SHA-256 algorithm it is used with.
#[derive(Clone)]
pub struct RsaPublicKey {
    pkcs1: Vec<u8>,
    algorithm: &'static ring::signature::RsaParameters,
    label: String,
    /// Set by [`RsaPublicKey::prepared`] for a trusted key that verifies many signatures.
    prepared: Option<Arc<Prepared>>,
}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaPublicKey")
            .field("label", &self.label)
            .field("prepared", &self.prepared.is_some())
            .finish()
    }
}

impl RsaPublicKey {
    /// The key of `certificate`, for PKCS#1 v1.5 SHA-256 signatures.
    ///
    /// `allow_1024` admits 1024-bit moduli (AWS `signature` format); otherwise at least 2048.
    /// `label` names the key in error messages ("us-east-1 region", "signer certificate").
    pub fn from_certificate(
        certificate: &Certificate,
        allow_1024: bool,
        label: impl Into<String>,
    ) -> Result<Self, Pkcs7Error> {
        let spki = &certificate.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != RSA_ENCRYPTION {
            return Err(Pkcs7Error::NotRsaKey {
                oid: spki.algorithm.oid,
            });
        }
        let pkcs1 = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| Pkcs7Error::Der("public key bit string is not byte aligned".into()))?
            .to_vec();
        Ok(Self::from_pkcs1(pkcs1, allow_1024, label))
    }

    /// A key from its PKCS#1 `RSAPublicKey` DER. The encoding is checked at first use.
    pub fn from_pkcs1(pkcs1: Vec<u8>, allow_1024: bool, label: impl Into<String>) -> Self {
        let algorithm = if allow_1024 {
            &ring::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
        } else {
            &ring::signature::RSA_PKCS1_2048_8192_SHA256
        };
        RsaPublicKey {
            pkcs1,
            algorithm,
            label: label.into(),
            prepared: None,
        }
    }

    /// A key from its modulus and exponent (unsigned big-endian, as a JWK carries them), for
    /// PKCS#1 v1.5 SHA-256 signatures with keys of at least 2048 bits. A component that is
    /// empty or has a leading zero byte is refused, as ring refuses it.
    pub fn from_components(
        modulus: &[u8],
        exponent: &[u8],
        label: impl Into<String>,
    ) -> Result<Self, Pkcs7Error> {
        if [modulus, exponent]
            .iter()
            .any(|c| c.first().is_none_or(|&b| b == 0))
        {
            return Err(Pkcs7Error::Der(
                "RSA modulus or exponent empty or not minimal".into(),
            ));
        }
        let pkcs1 = crate::prepared::pkcs1_der(modulus, exponent)
            .map_err(|e| Pkcs7Error::Der(e.to_string()))?;
        Ok(Self::from_pkcs1(pkcs1, false, label))
    }

    /// The same key with its verification state computed once (the modulus' Montgomery
    /// constants), for a trusted key that checks many signatures: an AWS region certificate,
    /// not a signer certificate that comes with one proof. Where this CPU or build cannot, or
    /// the key is outside 2048–8192 bits with exponent 65537, the key stays as it was; either
    /// way it accepts exactly the same signatures (`prepared.rs` says how, and tests it).
    pub fn prepared(mut self) -> Self {
        self.prepared = Prepared::new(&self.pkcs1).map(Arc::new);
        self
    }

    /// Whether [`RsaPublicKey::prepared`] took effect.
    pub fn is_prepared(&self) -> bool {
        self.prepared.is_some()
    }

    /// What the key is called in errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Verifies an RSA PKCS#1 v1.5 SHA-256 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), Pkcs7Error> {
        let good = match &self.prepared {
            Some(prepared) => prepared.verify(message, signature),
            None => self.verify_ring(message, signature),
        };
        good.then_some(()).ok_or_else(|| Pkcs7Error::BadSignature {
            key: self.label.clone(),
        })
    }

    fn verify_ring(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(self.algorithm, &self.pkcs1)
            .verify(message, signature)
            .is_ok()
    }
}
