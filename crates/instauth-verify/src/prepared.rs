//! RSA PKCS#1 v1.5 SHA-256 verification for a trusted key that checks many signatures (an AWS
//! region certificate, a Google JWKS key), with the key's Montgomery constants computed once.
//!
//! ring has no parsed RSA public key for verification: every call recomputes the modulus'
//! Montgomery constants, about a third of an RSA-2048 verification and a tenth of the server's
//! CPU per AWS exchange (docs/BENCHMARKS.md "Fleet load: prepared RSA keys"). graviola's
//! `VerifyingKey` keeps them, and its arithmetic is s2n-bignum's formally verified code. ring
//! stays the reference: a key is prepared only where graviola runs (x86_64 or aarch64 with the
//! CPU features it requires, which it would otherwise assert at run time) and only when ring
//! would accept it too (2048 to 8192 bits, exponent 65537); every other key, and every signature
//! of another length than the modulus (ring's rule; graviola would read it as a number), keeps
//! ring's path. The tests check
//! that both accept and refuse the same signatures.

/// A key prepared for repeated verification, or nothing when this build or CPU cannot.
pub(crate) struct Prepared {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    key: graviola::signing::rsa::VerifyingKey,
    modulus_len: usize,
}

/// The `RSAPublicKey` (RFC 8017 A.1.1) modulus and exponent, without leading zeros; `None` when
/// `pkcs1` is not exactly that.
fn components(pkcs1: &[u8]) -> Option<(&[u8], &[u8])> {
    use der::{Decode, Reader};
    let mut reader = der::SliceReader::new(pkcs1).ok()?;
    let parsed = reader
        .sequence(|r| {
            let n = der::asn1::UintRef::decode(r)?;
            let e = der::asn1::UintRef::decode(r)?;
            Ok((n.as_bytes(), e.as_bytes()))
        })
        .ok()?;
    reader.finish(parsed).ok()
}

/// The `RSAPublicKey` DER of a modulus and exponent given as unsigned big-endian magnitudes
/// (the inverse of [`components`]).
pub(crate) fn pkcs1_der(modulus: &[u8], exponent: &[u8]) -> der::Result<Vec<u8>> {
    use der::asn1::UintRef;
    use der::Encode;
    let (n, e) = (UintRef::new(modulus)?, UintRef::new(exponent)?);
    let mut out = Vec::new();
    der::Header::new(der::Tag::Sequence, (n.encoded_len()? + e.encoded_len()?)?)?
        .encode_to_vec(&mut out)?;
    n.encode_to_vec(&mut out)?;
    e.encode_to_vec(&mut out)?;
    Ok(out)
}

/// Bits of a big-endian magnitude without leading zeros.
fn bits(magnitude: &[u8]) -> usize {
    match magnitude.first() {
        Some(&top) => magnitude.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

impl Prepared {
    /// Prepares `pkcs1` (an `RSAPublicKey` DER) when this CPU runs graviola and ring would
    /// accept the key for `RSA_PKCS1_2048_8192_SHA256`.
    pub(crate) fn new(pkcs1: &[u8]) -> Option<Prepared> {
        let (n, e) = components(pkcs1)?;
        if !(2048..=8192).contains(&bits(n)) || e != [0x01, 0x00, 0x01] || !cpu_supported() {
            return None;
        }
        Self::build(pkcs1, n.len())
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn build(pkcs1: &[u8], modulus_len: usize) -> Option<Prepared> {
        let key = graviola::signing::rsa::VerifyingKey::from_pkcs1_der(pkcs1).ok()?;
        Some(Prepared { key, modulus_len })
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn build(_pkcs1: &[u8], _modulus_len: usize) -> Option<Prepared> {
        None
    }

    /// Whether `signature` is this key's PKCS#1 v1.5 SHA-256 signature over `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != self.modulus_len {
            return false;
        }
        self.verify_same_length(message, signature)
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn verify_same_length(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verify_pkcs1_sha256(signature, message).is_ok()
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn verify_same_length(&self, _message: &[u8], _signature: &[u8]) -> bool {
        false
    }
}

/// The CPU features graviola asserts on first use (its `verify_cpu_features`).
#[cfg(target_arch = "x86_64")]
fn cpu_supported() -> bool {
    std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("adx")
        && std::arch::is_x86_feature_detected!("avx")
        && std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(target_arch = "aarch64")]
fn cpu_supported() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
        && std::arch::is_aarch64_feature_detected!("sha2")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_supported() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkcs7::RsaPublicKey;
    use ring::rand::SystemRandom;
    use ring::signature::RsaKeyPair;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;

    fn key_pair(pem: &str) -> RsaKeyPair {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        RsaKeyPair::from_pkcs8(der.secret_der()).unwrap()
    }

    fn sign(
        key: &RsaKeyPair,
        alg: &'static dyn ring::signature::RsaEncoding,
        msg: &[u8],
    ) -> Vec<u8> {
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(alg, &SystemRandom::new(), msg, &mut sig).unwrap();
        sig
    }

    /// The prepared key and ring accept and refuse the same signatures: good ones, and every
    /// way of being wrong a verifier can get subtly different (length, range, padding, digest,
    /// another key, another message).
    #[test]
    fn prepared_key_accepts_exactly_what_ring_accepts() {
        if !cpu_supported() {
            eprintln!("this CPU does not run graviola: only ring's path exists here");
            return;
        }
        let key = key_pair(include_str!(
            "../../instauth-testkit/testdata/aws-region-2048.pem"
        ));
        let other = key_pair(include_str!(
            "../../instauth-testkit/testdata/aws-other-2048.pem"
        ));
        let pkcs1 = key.public().as_ref().to_vec();
        let plain = RsaPublicKey::from_pkcs1(pkcs1.clone(), false, "test");
        let prepared = plain.clone().prepared();
        assert!(prepared.is_prepared() && !plain.is_prepared());

        let msg = b"{\"instanceId\":\"i-0123456789abcdef0\",\"region\":\"us-east-1\"}".as_slice();
        let good = sign(&key, &ring::signature::RSA_PKCS1_SHA256, msg);
        let n = &components(&pkcs1).unwrap().0;
        let mut cases: Vec<(&str, Vec<u8>, &[u8])> = vec![
            ("good", good.clone(), msg),
            ("other message", good.clone(), b"other"),
            (
                "empty message",
                sign(&key, &ring::signature::RSA_PKCS1_SHA256, b""),
                b"",
            ),
            (
                "sha-384 digest",
                sign(&key, &ring::signature::RSA_PKCS1_SHA384, msg),
                msg,
            ),
            (
                "sha-512 digest",
                sign(&key, &ring::signature::RSA_PKCS1_SHA512, msg),
                msg,
            ),
            (
                "pss padding",
                sign(&key, &ring::signature::RSA_PSS_SHA256, msg),
                msg,
            ),
            (
                "other key",
                sign(&other, &ring::signature::RSA_PKCS1_SHA256, msg),
                msg,
            ),
            ("leading zero added", [&[0u8][..], &good].concat(), msg),
            ("last byte dropped", good[..good.len() - 1].to_vec(), msg),
            ("empty", Vec::new(), msg),
            ("zero", vec![0; good.len()], msg),
            ("one", [vec![0; good.len() - 1], vec![1]].concat(), msg),
            ("the modulus", n.to_vec(), msg),
            ("all ones", vec![0xff; good.len()], msg),
        ];
        for i in [0, 1, good.len() / 2, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[i] ^= 0x01;
            cases.push(("one bit flipped", flipped, msg));
        }
        for (what, sig, m) in &cases {
            let ring = plain.verify(m, sig).is_ok();
            assert_eq!(prepared.verify(m, sig).is_ok(), ring, "{what}");
            assert_eq!(ring, *what == "good" || *what == "empty message", "{what}");
        }
    }

    /// A key from a JWK's modulus and exponent is the key of the DER they came from; a
    /// non-minimal or empty component is refused (ring refuses it at every verification).
    #[test]
    fn key_from_components_is_the_der_key() {
        let key = key_pair(include_str!(
            "../../instauth-testkit/testdata/gcp-key-1.pem"
        ));
        let pkcs1 = key.public().as_ref().to_vec();
        let (n, e) = components(&pkcs1).unwrap();
        let from_der = RsaPublicKey::from_pkcs1(pkcs1.clone(), false, "der");
        let from_jwk = RsaPublicKey::from_components(n, e, "jwk")
            .unwrap()
            .prepared();
        let msg = b"header.payload";
        let good = sign(&key, &ring::signature::RSA_PKCS1_SHA256, msg);
        assert!(from_der.verify(msg, &good).is_ok());
        assert!(from_jwk.verify(msg, &good).is_ok());
        assert!(from_jwk.verify(b"header.other", &good).is_err());
        assert_eq!(from_jwk.is_prepared(), cpu_supported());
        let padded = [&[0u8][..], n].concat();
        assert!(RsaPublicKey::from_components(&padded, e, "jwk").is_err());
        assert!(RsaPublicKey::from_components(n, &[], "jwk").is_err());
        assert!(RsaPublicKey::from_components(&[], e, "jwk").is_err());
    }

    /// Keys ring would refuse for RSA-2048 signatures, or that graviola cannot hold, stay on
    /// ring's path.
    #[test]
    fn only_keys_ring_accepts_are_prepared() {
        let der = |n: &[u8], e: &[u8]| pkcs1_der(n, e).unwrap();
        let odd = |bytes: usize| {
            let mut n = vec![0xc5; bytes];
            n[bytes - 1] = 0x01;
            n
        };
        let f4 = [0x01, 0x00, 0x01];
        let supported = cpu_supported();
        assert_eq!(Prepared::new(&der(&odd(256), &f4)).is_some(), supported);
        assert_eq!(Prepared::new(&der(&odd(512), &f4)).is_some(), supported);
        assert!(Prepared::new(&der(&odd(128), &f4)).is_none(), "1024 bits");
        assert!(
            Prepared::new(&der(&[[0x7f].as_slice(), &odd(255)].concat(), &f4)).is_none(),
            "2047 bits"
        );
        assert!(Prepared::new(&der(&odd(1025), &f4)).is_none(), "8200 bits");
        assert!(
            Prepared::new(&der(&odd(256), &[0x03])).is_none(),
            "exponent 3"
        );
    }

    #[test]
    fn components_read_rsa_public_key_der() {
        // SEQUENCE { INTEGER 0x00C3 (leading zero for the sign), INTEGER 65537 }
        let der = [
            0x30, 0x09, 0x02, 0x02, 0x00, 0xc3, 0x02, 0x03, 0x01, 0x00, 0x01,
        ];
        assert_eq!(
            components(&der),
            Some((&[0xc3][..], &[0x01, 0x00, 0x01][..]))
        );
        assert_eq!(bits(&[0xc3]), 8);
        assert_eq!(bits(&[0x01, 0x00]), 9);
        // Trailing bytes after the key, and a truncated key, are not a key.
        let mut trailing = der.to_vec();
        trailing.push(0);
        assert_eq!(components(&trailing), None);
        assert_eq!(components(&der[..6]), None);
    }
}
