//! Azure verifier against generated proofs: what must pass and every forgery that must not.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use chrono::Duration;
use instauth_testkit::{issue_leaf, Pkcs7Signer, SignedDataBuilder, TestKey, TestPki};
use instauth_types::AzureInstanceIdentityRequest;
use instauth_verify::pkcs7::Pkcs7Error;
use instauth_verify::{FixedClock, Identity};
use instauth_verify_azure::{AzureError, AzureTrust, AzureVerifier};

fn trust(pki: &TestPki) -> AzureTrust {
    AzureTrust::from_roots_pem(&pki.azure_root_pem()).unwrap()
}

fn verifier_at(pki: &TestPki, offset: Duration) -> AzureVerifier {
    AzureVerifier::new(trust(pki), Arc::new(FixedClock::new(pki.now + offset)))
}

fn verifier(pki: &TestPki) -> AzureVerifier {
    verifier_at(pki, Duration::zero())
}

fn doc(vm: &str) -> Vec<u8> {
    TestPki::azure_document(vm, "sub-1").into_bytes()
}

fn legit_signer(pki: &TestPki) -> Pkcs7Signer {
    Pkcs7Signer::new(&pki.azure_leaf.der(), TestKey::AzureSigner).azure_digest_quirk()
}

fn verify_der(pki: &TestPki, der: &[u8]) -> Result<Identity, AzureError> {
    verifier(pki)
        .verify(&TestPki::azure_request(der))
        .map(|v| v.into_inner())
}

#[test]
fn valid_proof_verifies() {
    let pki = TestPki::new();
    let id = verifier(&pki).verify(&pki.azure_proof("vm-1")).unwrap();
    assert_eq!(
        id.into_inner(),
        Identity::Azure {
            instance_id: "vm-1".into(),
            subscription_id: Some("sub-1".into()),
            location: Some("westeurope".into()),
        }
    );
}

#[test]
fn signed_attributes_are_accepted_and_checked() {
    let pki = TestPki::new();
    let base = SignedDataBuilder::new(doc("vm-1"))
        .certificate(pki.azure_leaf.der())
        .certificate(pki.azure_intermediate.der());
    let signer =
        Pkcs7Signer::new(&pki.azure_leaf.der(), TestKey::AzureSigner).with_signed_attributes();
    assert!(verify_der(&pki, &base.clone().signer(signer.clone()).build()).is_ok());

    let mut bad_digest = signer;
    bad_digest.message_digest_override = Some(vec![0; 32]);
    assert!(matches!(
        verify_der(&pki, &base.signer(bad_digest).build()),
        Err(AzureError::Pkcs7(Pkcs7Error::MessageDigestMismatch))
    ));
}

#[test]
fn intermediates_come_from_the_bag_or_configuration() {
    let pki = TestPki::new();
    let der = SignedDataBuilder::new(doc("vm-1"))
        .certificate(pki.azure_leaf.der())
        .signer(legit_signer(&pki))
        .build();
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::UntrustedChain { .. })
    ));
    let mut t = trust(&pki);
    t.add_intermediates_pem(&pki.azure_intermediate_pem(), "i.pem".as_ref())
        .unwrap();
    let v = AzureVerifier::new(t, Arc::new(FixedClock::new(pki.now)));
    assert!(v.verify(&TestPki::azure_request(&der)).is_ok());
}

#[test]
fn tampered_content_fails() {
    let pki = TestPki::new();
    let der = SignedDataBuilder::new(doc("vm-evil"))
        .certificate(pki.azure_leaf.der())
        .certificate(pki.azure_intermediate.der())
        .signer(legit_signer(&pki))
        .build_with_signed_content(&doc("vm-1"));
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::Pkcs7(Pkcs7Error::BadSignature { .. }))
    ));
}

#[test]
fn one_flipped_content_byte_fails() {
    let pki = TestPki::new();
    let mut der = pki.azure_pkcs7_like_azure(&doc("vm-1"));
    let pos = der.windows(4).position(|w| w == b"vm-1").unwrap();
    der[pos + 3] = b'2';
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::Pkcs7(Pkcs7Error::BadSignature { .. }))
    ));
}

#[test]
fn tampered_signature_fails() {
    let pki = TestPki::new();
    let mut der = pki.azure_pkcs7_like_azure(&doc("vm-1"));
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::Pkcs7(Pkcs7Error::BadSignature { .. }))
    ));
}

#[test]
fn signer_naming_the_azure_cert_but_signing_with_another_key_fails() {
    let pki = TestPki::new();
    let der = SignedDataBuilder::new(doc("vm-1"))
        .certificate(pki.azure_leaf.der())
        .certificate(pki.azure_intermediate.der())
        .signer(Pkcs7Signer::new(&pki.azure_leaf.der(), TestKey::Attacker).azure_digest_quirk())
        .build();
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::Pkcs7(Pkcs7Error::BadSignature { .. }))
    ));
}

#[test]
fn valid_azure_certificate_first_in_bag_with_attacker_signer_fails() {
    let pki = TestPki::new();
    let der = SignedDataBuilder::new(doc("vm-1"))
        .certificate(pki.azure_leaf.der())
        .certificate(pki.azure_intermediate.der())
        .certificate(pki.attacker_leaf.der())
        .signer(Pkcs7Signer::new(&pki.attacker_leaf.der(), TestKey::Attacker).azure_digest_quirk())
        .build();
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::UntrustedChain { .. })
    ));
}

#[test]
fn signer_certificate_must_be_in_the_bag() {
    let pki = TestPki::new();
    let der = SignedDataBuilder::new(doc("vm-1"))
        .certificate(pki.azure_intermediate.der())
        .signer(legit_signer(&pki))
        .build();
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::Pkcs7(Pkcs7Error::SignerCertificateNotFound))
    ));
}

#[test]
fn wrong_name_fails_even_with_a_trusted_chain() {
    let pki = TestPki::new();
    for names in [
        &["evil.example.com"][..],
        &["metadata.azure.com.evil.example"],
        &["notmetadata.azure.com"],
    ] {
        let leaf = issue_leaf(
            "evil",
            names,
            TestKey::AzureSigner,
            pki.azure_leaf_validity,
            99,
            &pki.azure_intermediate,
        );
        let der = SignedDataBuilder::new(doc("vm-1"))
            .certificate(leaf.der())
            .certificate(pki.azure_intermediate.der())
            .signer(Pkcs7Signer::new(&leaf.der(), TestKey::AzureSigner).azure_digest_quirk())
            .build();
        assert!(
            matches!(
                verify_der(&pki, &der),
                Err(AzureError::UntrustedSignerName { .. })
            ),
            "{names:?}"
        );
    }
}

#[test]
fn other_azure_clouds_and_subdomains_are_accepted() {
    let pki = TestPki::new();
    for name in [
        "metadata.azure.us",
        "metadata.azure.cn",
        "metadata.microsoftazure.de",
        "eastus.metadata.azure.com",
    ] {
        let leaf = issue_leaf(
            name,
            &[name],
            TestKey::AzureSigner,
            pki.azure_leaf_validity,
            98,
            &pki.azure_intermediate,
        );
        let der = SignedDataBuilder::new(doc("vm-1"))
            .certificate(leaf.der())
            .certificate(pki.azure_intermediate.der())
            .signer(Pkcs7Signer::new(&leaf.der(), TestKey::AzureSigner).azure_digest_quirk())
            .build();
        assert!(verify_der(&pki, &der).is_ok(), "{name}");
    }
}

#[test]
fn expired_and_not_yet_valid_chains_fail() {
    let pki = TestPki::new();
    let req = pki.azure_proof("vm-1");
    let err = verifier_at(&pki, Duration::hours(2))
        .verify(&req)
        .unwrap_err();
    assert!(
        matches!(err, AzureError::CertificateExpired { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not after"));
    let err = verifier_at(&pki, -Duration::hours(2))
        .verify(&req)
        .unwrap_err();
    assert!(
        matches!(err, AzureError::CertificateNotYetValid { .. }),
        "{err}"
    );
    assert!(verifier_at(&pki, Duration::minutes(59))
        .verify(&req)
        .is_ok());
}

#[test]
fn two_signers_fail() {
    let pki = TestPki::new();
    let der = SignedDataBuilder::new(doc("vm-1"))
        .certificate(pki.azure_leaf.der())
        .certificate(pki.azure_intermediate.der())
        .signer(legit_signer(&pki))
        .signer(Pkcs7Signer::new(
            &pki.azure_leaf.der(),
            TestKey::AzureSigner,
        ))
        .build();
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::Pkcs7(Pkcs7Error::SignerCount { count: 2 }))
    ));
    let none = SignedDataBuilder::new(doc("vm-1"))
        .certificate(pki.azure_leaf.der())
        .build();
    assert!(verify_der(&pki, &none).is_err());
}

#[test]
fn untrusted_root_fails() {
    let pki = TestPki::new();
    let other = TestPki::new();
    // Same names, different (freshly generated) CA keys.
    let v = AzureVerifier::new(trust(&other), Arc::new(FixedClock::new(pki.now)));
    assert!(matches!(
        v.verify(&pki.azure_proof("vm-1")),
        Err(AzureError::UntrustedChain { .. })
    ));
    // And the built-in (real Azure) roots do not trust the test hierarchy either.
    let v = AzureVerifier::new(AzureTrust::builtin(), Arc::new(FixedClock::new(pki.now)));
    assert!(v.verify(&pki.azure_proof("vm-1")).is_err());
}

#[test]
fn garbage_and_truncated_inputs_fail_cleanly() {
    let pki = TestPki::new();
    let v = verifier(&pki);
    for g in [
        "",
        " ",
        "%%%",
        "AAAA",
        "e30=",
        "MIAGCSqGSIb3DQEHAqCA",
        "MA==",
    ] {
        let req = AzureInstanceIdentityRequest {
            signature: g.into(),
            encoding: "pkcs7".into(),
            agent_name: None,
        };
        assert!(v.verify(&req).is_err(), "{g:?}");
    }
    let mut req = pki.azure_proof("vm-1");
    req.encoding = "json".into();
    assert!(matches!(
        v.verify(&req),
        Err(AzureError::UnsupportedEncoding { .. })
    ));

    let der = pki.azure_pkcs7_like_azure(&doc("vm-1"));
    for len in 0..der.len() {
        assert!(verify_der(&pki, &der[..len]).is_err(), "truncated at {len}");
    }
    let text = pki.azure_proof("vm-1").signature;
    for len in (1..text.len()).step_by(11) {
        let req = AzureInstanceIdentityRequest {
            signature: text[..len].into(),
            encoding: "pkcs7".into(),
            agent_name: None,
        };
        assert!(v.verify(&req).is_err(), "truncated base64 at {len}");
    }
    for content in [
        &b""[..],
        b"{}",
        b"not json",
        b"{\"vmId\":\"\",\"subscriptionId\":\"s\"}",
        b"{\"vmId\":1}",
    ] {
        let der = pki.azure_pkcs7_like_azure(content);
        assert!(
            matches!(
                verify_der(&pki, &der),
                Err(AzureError::MalformedDocument { .. })
            ),
            "{content:?}"
        );
    }
}

#[test]
fn look_alike_certificate_with_the_signers_issuer_and_serial_is_rejected() {
    let pki = TestPki::new();
    // An attacker CA with the same name as the real intermediate issues a leaf with the same
    // serial as the real signer: both match the SignerInfo, so the signer is ambiguous.
    let fake_ca = instauth_testkit::issue_intermediate(
        "instauth test Azure TLS CA",
        pki.azure_leaf_validity,
        11,
        &pki.attacker_root,
    );
    let fake_leaf = issue_leaf(
        "metadata.azure.com",
        &["metadata.azure.com"],
        TestKey::Attacker,
        pki.azure_leaf_validity,
        12,
        &fake_ca,
    );
    for bag in [
        vec![
            pki.azure_leaf.der(),
            fake_leaf.der(),
            pki.azure_intermediate.der(),
        ],
        vec![
            fake_leaf.der(),
            pki.azure_leaf.der(),
            pki.azure_intermediate.der(),
        ],
    ] {
        let mut b = SignedDataBuilder::new(doc("vm-1"));
        for c in bag {
            b = b.certificate(c);
        }
        let der = b
            .signer(Pkcs7Signer::new(&fake_leaf.der(), TestKey::Attacker).azure_digest_quirk())
            .build();
        assert!(matches!(
            verify_der(&pki, &der),
            Err(AzureError::Pkcs7(Pkcs7Error::AmbiguousSignerCertificate {
                count: 2
            }))
        ));
    }
}

#[test]
fn replayed_document_past_its_expires_on_is_rejected() {
    let pki = TestPki::new();
    let old = TestPki::azure_document_at("vm-1", "sub-1", pki.now - Duration::hours(7));
    let der = pki.azure_pkcs7_like_azure(old.as_bytes());
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::DocumentExpired { .. })
    ));
}

#[test]
fn document_from_the_future_is_rejected() {
    let pki = TestPki::new();
    let future = TestPki::azure_document_at("vm-1", "sub-1", pki.now + Duration::minutes(10));
    let der = pki.azure_pkcs7_like_azure(future.as_bytes());
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::DocumentNotYetValid { .. })
    ));
}

#[test]
fn document_without_time_stamp_is_rejected() {
    let pki = TestPki::new();
    let der = pki.azure_pkcs7_like_azure(br#"{"vmId":"vm-1","subscriptionId":"sub-1"}"#);
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::MalformedDocument { .. })
    ));
}
