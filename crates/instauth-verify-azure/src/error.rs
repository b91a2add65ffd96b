//! Why an Azure proof was rejected.

use std::fmt;

use chrono::{DateTime, Utc};
use instauth_verify::encoding::Base64Error;
use instauth_verify::pkcs7::Pkcs7Error;

use crate::aia::AiaError;

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
    /// The certificate bag holds more certificates than any real proof.
    #[error("PKCS#7 certificate bag holds {count} certificates, at most {max} are accepted")]
    CertificateBagTooLarge {
        /// How many there are.
        count: usize,
        /// [`MAX_BAG_CERTIFICATES`](crate::MAX_BAG_CERTIFICATES).
        max: usize,
    },
    /// A certificate of the bag is larger than any real one.
    #[error(
        "PKCS#7 certificate bag holds a certificate of {len} bytes, at most {max} are accepted"
    )]
    CertificateTooLarge {
        /// Its DER length.
        len: usize,
        /// [`MAX_CERTIFICATE_LEN`](crate::MAX_CERTIFICATE_LEN).
        max: usize,
    },
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
    /// No trusted anchor or issuing CA may have issued the signer: a CA generation the
    /// verifier does not know yet (fetch it, see the crate documentation), or a forgery.
    #[error("{0}")]
    UnknownIssuer(MissingIssuer),
    /// The signer certificate does not chain to a trusted root.
    #[error("signer certificate does not chain to a trusted Azure root: {reason}")]
    UntrustedChain {
        /// webpki's reason.
        reason: String,
    },
    /// The signer's issuing CA could not be fetched from its AIA URL.
    #[error("signer's issuing CA is unknown and could not be fetched: {0}")]
    Aia(#[from] AiaError),
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

impl AzureError {
    /// A temporary failure (the issuing CA's host is unreachable, slow or rate-limited and
    /// nothing is cached): the proof may be good, so the API answers 503 with `Retry-After`.
    /// Every other error is a bad proof (401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AzureError::Aia(e) if e.is_unavailable())
    }
}

/// The signer's issuer that no trusted anchor or issuing CA matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingIssuer {
    /// The issuer's distinguished name (RFC 4514, at most 512 characters).
    pub issuer: String,
    /// The signer's `caIssuers` URLs (at most 4), where the issuer can be downloaded.
    pub ca_issuers: Vec<String>,
    /// The issuer name as webpki compares it, to match a fetched certificate's subject.
    pub(crate) issuer_name: Vec<u8>,
    /// The signer's authority key identifier.
    pub(crate) issuer_key_id: Option<Vec<u8>>,
}

impl fmt::Display for MissingIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "signer certificate's issuer \"{}\" is not a trusted Azure CA",
            self.issuer
        )?;
        if !self.ca_issuers.is_empty() {
            write!(f, " (caIssuers: {})", self.ca_issuers.join(", "))?;
        }
        Ok(())
    }
}
