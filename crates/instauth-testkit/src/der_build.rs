//! PKCS#7 `SignedData` DER built piece by piece, so tests control what encoders normally decide:
//! the order of the certificate bag and of the signers, which certificate a `SignerInfo` names,
//! the digest algorithm, and whether signed attributes exist.

use const_oid::db::rfc5911::{ID_CONTENT_TYPE, ID_DATA, ID_MESSAGE_DIGEST, ID_SIGNED_DATA};
use const_oid::db::rfc5912::{ID_SHA_256, RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION};
use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use x509_cert::Certificate;

use crate::keys::TestKey;

/// DER tag-length-value.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn oid(o: ObjectIdentifier) -> Vec<u8> {
    tlv(0x06, o.as_bytes())
}

fn alg_id(o: ObjectIdentifier) -> Vec<u8> {
    tlv(0x30, &[oid(o), vec![0x05, 0x00]].concat())
}

/// The DER `SET OF` ordering: elements sorted by their encodings.
fn der_set(mut elements: Vec<Vec<u8>>) -> Vec<u8> {
    elements.sort();
    tlv(0x31, &elements.concat())
}

/// One `SignerInfo` to add.
#[derive(Clone)]
pub struct Pkcs7Signer {
    /// Certificate whose issuer and serial number the `SignerInfo` names.
    pub named_cert: Vec<u8>,
    /// The key that actually signs.
    pub key: TestKey,
    /// Sign the DER of signed attributes (contentType + messageDigest) instead of the content.
    pub signed_attributes: bool,
    /// Use `sha256WithRSAEncryption` as digest algorithm (Azure's quirk) instead of SHA-256.
    pub rsa_as_digest: bool,
    /// Put this value in the messageDigest attribute instead of the content's SHA-256.
    pub message_digest_override: Option<Vec<u8>>,
}

impl Pkcs7Signer {
    /// A signer naming `named_cert` and signing with `key` over the raw content.
    pub fn new(named_cert: &[u8], key: TestKey) -> Self {
        Pkcs7Signer {
            named_cert: named_cert.to_vec(),
            key,
            signed_attributes: false,
            rsa_as_digest: false,
            message_digest_override: None,
        }
    }

    /// Sign over signed attributes (as AWS does).
    pub fn with_signed_attributes(mut self) -> Self {
        self.signed_attributes = true;
        self
    }

    /// `digestAlgorithm = sha256WithRSAEncryption` (as Azure does).
    pub fn azure_digest_quirk(mut self) -> Self {
        self.rsa_as_digest = true;
        self
    }

    fn encode(&self, content: &[u8]) -> Vec<u8> {
        let cert = Certificate::from_der(&self.named_cert).unwrap();
        let ias = tlv(
            0x30,
            &[
                cert.tbs_certificate.issuer.to_der().unwrap(),
                cert.tbs_certificate.serial_number.to_der().unwrap(),
            ]
            .concat(),
        );
        let digest_alg = if self.rsa_as_digest {
            alg_id(SHA_256_WITH_RSA_ENCRYPTION)
        } else {
            alg_id(ID_SHA_256)
        };
        let mut parts = vec![vec![0x02, 0x01, 0x01], ias, digest_alg];
        let signature = if self.signed_attributes {
            let digest = self.message_digest_override.clone().unwrap_or_else(|| {
                ring::digest::digest(&ring::digest::SHA256, content)
                    .as_ref()
                    .to_vec()
            });
            let attrs = vec![
                tlv(
                    0x30,
                    &[oid(ID_CONTENT_TYPE), der_set(vec![oid(ID_DATA)])].concat(),
                ),
                tlv(
                    0x30,
                    &[oid(ID_MESSAGE_DIGEST), der_set(vec![tlv(0x04, &digest)])].concat(),
                ),
            ];
            let set = der_set(attrs);
            let sig = self.key.sign_sha256(&set);
            // In the SignerInfo the SET travels as [0] IMPLICIT.
            let mut implicit = set;
            implicit[0] = 0xa0;
            parts.push(implicit);
            sig
        } else {
            self.key.sign_sha256(content)
        };
        parts.push(alg_id(RSA_ENCRYPTION));
        parts.push(tlv(0x04, &signature));
        tlv(0x30, &parts.concat())
    }
}

/// Builds a DER `ContentInfo { signedData }` over `id-data` content.
#[derive(Clone)]
pub struct SignedDataBuilder {
    content: Vec<u8>,
    certificates: Vec<Vec<u8>>,
    signers: Vec<Pkcs7Signer>,
}

impl SignedDataBuilder {
    /// Starts with `content` and no certificates or signers.
    pub fn new(content: Vec<u8>) -> Self {
        SignedDataBuilder {
            content,
            certificates: Vec::new(),
            signers: Vec::new(),
        }
    }

    /// Appends a certificate (DER) to the bag; the bag keeps this order, DER sorting aside.
    pub fn certificate(mut self, der: Vec<u8>) -> Self {
        self.certificates.push(der);
        self
    }

    /// Appends a signer.
    pub fn signer(mut self, signer: Pkcs7Signer) -> Self {
        self.signers.push(signer);
        self
    }

    /// Replaces the content after signers were configured (signatures are computed at
    /// [`Self::build`] over the content, so use [`Self::build_with_signed_content`] to make
    /// content and signature disagree).
    pub fn content(mut self, content: Vec<u8>) -> Self {
        self.content = content;
        self
    }

    /// The DER.
    pub fn build(&self) -> Vec<u8> {
        self.build_with_signed_content(&self.content)
    }

    /// The DER carrying `self.content` but with signatures computed over `signed` (tampering).
    pub fn build_with_signed_content(&self, signed: &[u8]) -> Vec<u8> {
        let encap = tlv(
            0x30,
            &[oid(ID_DATA), tlv(0xa0, &tlv(0x04, &self.content))].concat(),
        );
        let mut sd = vec![
            vec![0x02, 0x01, 0x01],
            der_set(vec![alg_id(ID_SHA_256)]),
            encap,
        ];
        if !self.certificates.is_empty() {
            // Kept in the caller's order on purpose (BER producers do not sort).
            sd.push(tlv(0xa0, &self.certificates.concat()));
        }
        let signer_infos: Vec<Vec<u8>> = self.signers.iter().map(|s| s.encode(signed)).collect();
        sd.push(tlv(0x31, &signer_infos.concat()));
        let signed_data = tlv(0x30, &sd.concat());
        tlv(
            0x30,
            &[oid(ID_SIGNED_DATA), tlv(0xa0, &signed_data)].concat(),
        )
    }
}
