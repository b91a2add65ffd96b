//! The committed test-only RSA keys (`testdata/README.md`) and signing with them.

use std::sync::OnceLock;

use base64::Engine;
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;

/// One of the committed test keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    /// 2048-bit, the Azure-like `metadata.azure.com` signer.
    AzureSigner,
    /// 2048-bit, an attacker's.
    Attacker,
    /// 2048-bit, the test AWS region's `rsa2048` key.
    AwsRegion2048,
    /// 2048-bit, a wrong AWS `rsa2048` key.
    AwsOther2048,
    /// 1024-bit, the test AWS region's `signature` key.
    AwsRegion1024,
    /// 1024-bit, a wrong AWS `signature` key.
    AwsOther1024,
    /// 2048-bit, Google-like JWKS key 1.
    Gcp1,
    /// 2048-bit, Google-like JWKS key 2.
    Gcp2,
}

impl TestKey {
    /// The PKCS#8 PEM.
    pub fn pem(self) -> &'static str {
        match self {
            TestKey::AzureSigner => include_str!("../testdata/azure-signer.pem"),
            TestKey::Attacker => include_str!("../testdata/attacker-signer.pem"),
            TestKey::AwsRegion2048 => include_str!("../testdata/aws-region-2048.pem"),
            TestKey::AwsOther2048 => include_str!("../testdata/aws-other-2048.pem"),
            TestKey::AwsRegion1024 => include_str!("../testdata/aws-region-1024.pem"),
            TestKey::AwsOther1024 => include_str!("../testdata/aws-other-1024.pem"),
            TestKey::Gcp1 => include_str!("../testdata/gcp-key-1.pem"),
            TestKey::Gcp2 => include_str!("../testdata/gcp-key-2.pem"),
        }
    }

    /// The PKCS#8 DER.
    pub fn pkcs8_der(self) -> Vec<u8> {
        let body: String = self
            .pem()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    /// Position in [`TestKey::ALL`], for the per-key caches.
    fn index(self) -> usize {
        Self::ALL.iter().position(|&k| k == self).unwrap()
    }

    /// Every key.
    pub const ALL: [TestKey; 8] = [
        TestKey::AzureSigner,
        TestKey::Attacker,
        TestKey::AwsRegion2048,
        TestKey::AwsOther2048,
        TestKey::AwsRegion1024,
        TestKey::AwsOther1024,
        TestKey::Gcp1,
        TestKey::Gcp2,
    ];

    /// Parsed once per process: loading a private key costs more than signing with it, and
    /// load tests sign tens of thousands of proofs.
    fn rsa(self) -> &'static rsa::RsaPrivateKey {
        static KEYS: [OnceLock<rsa::RsaPrivateKey>; 8] = [const { OnceLock::new() }; 8];
        KEYS[self.index()].get_or_init(|| rsa::RsaPrivateKey::from_pkcs8_pem(self.pem()).unwrap())
    }

    /// The ring key pair (2048-bit keys only), parsed once per process.
    fn ring_pair(self) -> &'static ring::signature::RsaKeyPair {
        static PAIRS: [OnceLock<ring::signature::RsaKeyPair>; 8] = [const { OnceLock::new() }; 8];
        PAIRS[self.index()]
            .get_or_init(|| ring::signature::RsaKeyPair::from_pkcs8(&self.pkcs8_der()).unwrap())
    }

    /// Is this a 1024-bit key (which ring will not sign with)?
    pub fn is_1024(self) -> bool {
        matches!(self, TestKey::AwsRegion1024 | TestKey::AwsOther1024)
    }

    /// The key for rcgen (2048-bit keys only).
    pub fn rcgen_key_pair(self) -> rcgen::KeyPair {
        rcgen::KeyPair::from_pem(self.pem()).unwrap()
    }

    /// The PKCS#1 `RSAPublicKey` DER.
    pub fn pkcs1_public_der(self) -> Vec<u8> {
        self.rsa()
            .to_public_key()
            .to_pkcs1_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    /// Big-endian modulus and public exponent (for JWKS).
    pub fn modulus_and_exponent(self) -> (Vec<u8>, Vec<u8>) {
        let k = self.rsa();
        (k.n().to_bytes_be(), k.e().to_bytes_be())
    }

    /// RSA PKCS#1 v1.5 SHA-256 signature of `message`: ring for 2048-bit keys, the `rsa`
    /// crate for 1024-bit ones (ring refuses to load RSA private keys under 2048 bits).
    pub fn sign_sha256(self, message: &[u8]) -> Vec<u8> {
        if self.is_1024() {
            let digest = ring::digest::digest(&ring::digest::SHA256, message);
            self.rsa()
                .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), digest.as_ref())
                .unwrap()
        } else {
            let pair = self.ring_pair();
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                message,
                &mut sig,
            )
            .unwrap();
            sig
        }
    }
}

/// A bare RSA public key for rcgen to put in a certificate it signs with another key.
pub(crate) struct Pkcs1PublicKey(pub(crate) Vec<u8>);

impl rcgen::PublicKeyData for Pkcs1PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}
