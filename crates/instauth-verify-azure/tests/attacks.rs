//! Azure verifier against generated proofs: what must pass, and a table of every forgery that
//! must not, each with the error it must fail with.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use chrono::Duration;
use instauth_testkit::{issue_leaf, Issued, Pkcs7Signer, SignedDataBuilder, TestKey, TestPki};
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

/// The signer and the real intermediate in the bag, `content` signed by `signer`.
fn with_bag(content: Vec<u8>, bag: &[Vec<u8>], signer: Pkcs7Signer) -> Vec<u8> {
    let mut b = SignedDataBuilder::new(content);
    for der in bag {
        b = b.certificate(der.clone());
    }
    b.signer(signer).build()
}

fn leaf_named(pki: &TestPki, names: &[&str], serial: u64) -> Issued {
    issue_leaf(
        names[0],
        names,
        TestKey::AzureSigner,
        pki.azure_leaf_validity,
        serial,
        &pki.azure_intermediate,
    )
}

fn named_leaf_proof(pki: &TestPki, names: &[&str]) -> Vec<u8> {
    let leaf = leaf_named(pki, names, 99);
    with_bag(
        doc("vm-1"),
        &[leaf.der(), pki.azure_intermediate.der()],
        Pkcs7Signer::new(&leaf.der(), TestKey::AzureSigner).azure_digest_quirk(),
    )
}

/// A certificate over `MAX_CERTIFICATE_LEN` bytes (a large extension), issued by the test CA.
fn oversized_certificate(pki: &TestPki) -> Vec<u8> {
    let mut p = rcgen::CertificateParams::new(vec!["x.example".to_string()]).unwrap();
    p.custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![0x04, 0x82, 0x23, 0x28]
                .into_iter()
                .chain(std::iter::repeat_n(0, 9_000))
                .collect(),
        ));
    let key = rcgen::KeyPair::generate().unwrap();
    p.signed_by(
        &key,
        &pki.azure_intermediate.cert,
        &pki.azure_intermediate.key,
    )
    .unwrap()
    .der()
    .to_vec()
}

/// Which trust a case is verified against.
#[derive(Clone, Copy)]
enum Trust {
    /// The test root only.
    Test,
    /// Another test PKI's root: same names, other keys.
    OtherPki,
    /// The real built-in Azure trust.
    BuiltIn,
}

struct Case {
    name: &'static str,
    proof: fn(&TestPki) -> Vec<u8>,
    at: Duration,
    trust: Trust,
    expect: fn(&AzureError) -> bool,
}

fn case(
    name: &'static str,
    proof: fn(&TestPki) -> Vec<u8>,
    expect: fn(&AzureError) -> bool,
) -> Case {
    Case {
        name,
        proof,
        at: Duration::zero(),
        trust: Trust::Test,
        expect,
    }
}

impl Case {
    fn at(mut self, offset: Duration) -> Self {
        self.at = offset;
        self
    }
    fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }
}

fn bad_signature(e: &AzureError) -> bool {
    matches!(e, AzureError::Pkcs7(Pkcs7Error::BadSignature { .. }))
}
fn unknown_issuer(e: &AzureError) -> bool {
    matches!(e, AzureError::UnknownIssuer(_))
}
fn wrong_name(e: &AzureError) -> bool {
    matches!(e, AzureError::UntrustedSignerName { .. })
}
fn malformed(e: &AzureError) -> bool {
    matches!(e, AzureError::MalformedDocument { .. })
}

fn attacks() -> Vec<Case> {
    vec![
        case(
            "content differs from what was signed",
            |pki| {
                SignedDataBuilder::new(doc("vm-evil"))
                    .certificate(pki.azure_leaf.der())
                    .certificate(pki.azure_intermediate.der())
                    .signer(legit_signer(pki))
                    .build_with_signed_content(&doc("vm-1"))
            },
            bad_signature,
        ),
        case(
            "one content byte flipped",
            |pki| {
                let mut der = pki.azure_pkcs7_like_azure(&doc("vm-1"));
                let pos = der.windows(4).position(|w| w == b"vm-1").unwrap();
                der[pos + 3] = b'2';
                der
            },
            bad_signature,
        ),
        case(
            "signature bit flipped",
            |pki| {
                let mut der = pki.azure_pkcs7_like_azure(&doc("vm-1"));
                let last = der.len() - 1;
                der[last] ^= 0x01;
                der
            },
            bad_signature,
        ),
        case(
            "signer names the Azure certificate but signs with another key",
            |pki| {
                with_bag(
                    doc("vm-1"),
                    &[pki.azure_leaf.der(), pki.azure_intermediate.der()],
                    Pkcs7Signer::new(&pki.azure_leaf.der(), TestKey::Attacker).azure_digest_quirk(),
                )
            },
            bad_signature,
        ),
        case(
            "real Azure certificate first in the bag, attacker's own certificate signs",
            |pki| {
                with_bag(
                    doc("vm-1"),
                    &[
                        pki.azure_leaf.der(),
                        pki.azure_intermediate.der(),
                        pki.attacker_leaf.der(),
                    ],
                    Pkcs7Signer::new(&pki.attacker_leaf.der(), TestKey::Attacker)
                        .azure_digest_quirk(),
                )
            },
            unknown_issuer,
        ),
        case(
            "signer certificate missing from the bag",
            |pki| {
                with_bag(
                    doc("vm-1"),
                    &[pki.azure_intermediate.der()],
                    legit_signer(pki),
                )
            },
            |e| matches!(e, AzureError::Pkcs7(Pkcs7Error::SignerCertificateNotFound)),
        ),
        case(
            "signer issued for another name",
            |pki| named_leaf_proof(pki, &["evil.example.com"]),
            wrong_name,
        ),
        case(
            "signer issued for an Azure name as a prefix",
            |pki| named_leaf_proof(pki, &["metadata.azure.com.evil.example"]),
            wrong_name,
        ),
        case(
            "signer issued for a look-alike Azure name",
            |pki| named_leaf_proof(pki, &["notmetadata.azure.com"]),
            wrong_name,
        ),
        case(
            "two signers",
            |pki| {
                SignedDataBuilder::new(doc("vm-1"))
                    .certificate(pki.azure_leaf.der())
                    .certificate(pki.azure_intermediate.der())
                    .signer(legit_signer(pki))
                    .signer(Pkcs7Signer::new(
                        &pki.azure_leaf.der(),
                        TestKey::AzureSigner,
                    ))
                    .build()
            },
            |e| matches!(e, AzureError::Pkcs7(Pkcs7Error::SignerCount { count: 2 })),
        ),
        case(
            "no signer",
            |pki| {
                SignedDataBuilder::new(doc("vm-1"))
                    .certificate(pki.azure_leaf.der())
                    .build()
            },
            |e| matches!(e, AzureError::Pkcs7(Pkcs7Error::SignerCount { count: 0 })),
        ),
        case(
            "look-alike certificate with the signer's issuer and serial, first in the bag",
            |pki| look_alike(pki, true),
            |e| {
                matches!(
                    e,
                    AzureError::Pkcs7(Pkcs7Error::AmbiguousSignerCertificate { count: 2 })
                )
            },
        ),
        case(
            "look-alike certificate with the signer's issuer and serial, second in the bag",
            |pki| look_alike(pki, false),
            |e| {
                matches!(
                    e,
                    AzureError::Pkcs7(Pkcs7Error::AmbiguousSignerCertificate { count: 2 })
                )
            },
        ),
        case(
            "signed attributes with a wrong messageDigest",
            |pki| {
                let mut signer = Pkcs7Signer::new(&pki.azure_leaf.der(), TestKey::AzureSigner)
                    .with_signed_attributes();
                signer.message_digest_override = Some(vec![0; 32]);
                with_bag(
                    doc("vm-1"),
                    &[pki.azure_leaf.der(), pki.azure_intermediate.der()],
                    signer,
                )
            },
            |e| matches!(e, AzureError::Pkcs7(Pkcs7Error::MessageDigestMismatch)),
        ),
        case(
            "document replayed after its expiresOn",
            |pki| {
                let old = TestPki::azure_document_at("vm-1", "sub-1", pki.now - Duration::hours(7));
                pki.azure_pkcs7_like_azure(old.as_bytes())
            },
            |e| matches!(e, AzureError::DocumentExpired { .. }),
        ),
        case(
            "document created in the future",
            |pki| {
                let future =
                    TestPki::azure_document_at("vm-1", "sub-1", pki.now + Duration::minutes(10));
                pki.azure_pkcs7_like_azure(future.as_bytes())
            },
            |e| matches!(e, AzureError::DocumentNotYetValid { .. }),
        ),
        case(
            "document without timeStamp",
            |pki| pki.azure_pkcs7_like_azure(br#"{"vmId":"vm-1","subscriptionId":"sub-1"}"#),
            malformed,
        ),
        case(
            "empty content",
            |pki| pki.azure_pkcs7_like_azure(b""),
            malformed,
        ),
        case(
            "content not JSON",
            |pki| pki.azure_pkcs7_like_azure(b"not json"),
            malformed,
        ),
        case(
            "content without vmId",
            |pki| pki.azure_pkcs7_like_azure(b"{}"),
            malformed,
        ),
        case(
            "empty vmId",
            |pki| pki.azure_pkcs7_like_azure(br#"{"vmId":"","subscriptionId":"s"}"#),
            malformed,
        ),
        case(
            "vmId not a string",
            |pki| pki.azure_pkcs7_like_azure(br#"{"vmId":1}"#),
            malformed,
        ),
        case(
            "chain expired",
            |pki| pki.azure_pkcs7_like_azure(&doc("vm-1")),
            |e| matches!(e, AzureError::CertificateExpired { .. }),
        )
        .at(Duration::hours(2)),
        case(
            "chain not yet valid",
            |pki| pki.azure_pkcs7_like_azure(&doc("vm-1")),
            |e| matches!(e, AzureError::CertificateNotYetValid { .. }),
        )
        .at(-Duration::hours(2)),
        case(
            "root with the same names but other keys",
            |pki| pki.azure_pkcs7_like_azure(&doc("vm-1")),
            |e| matches!(e, AzureError::UntrustedChain { .. }),
        )
        .trust(Trust::OtherPki),
        case(
            "test hierarchy against the real Azure roots",
            |pki| pki.azure_pkcs7_like_azure(&doc("vm-1")),
            |e| matches!(e, AzureError::UntrustedChain { .. }),
        )
        .trust(Trust::BuiltIn),
        case(
            "issuing CA neither in the bag nor configured",
            |pki| with_bag(doc("vm-1"), &[pki.azure_leaf.der()], legit_signer(pki)),
            unknown_issuer,
        ),
        case(
            "five certificates in the bag",
            |pki| {
                let mut bag = vec![pki.azure_leaf.der(), pki.azure_intermediate.der()];
                bag.extend((0..3).map(|i| leaf_named(pki, &["x.example"], 200 + i).der()));
                with_bag(doc("vm-1"), &bag, legit_signer(pki))
            },
            |e| matches!(e, AzureError::CertificateBagTooLarge { count: 5, max: 4 }),
        ),
        case(
            "a certificate over 8 KiB in the bag",
            |pki| {
                with_bag(
                    doc("vm-1"),
                    &[pki.azure_leaf.der(), oversized_certificate(pki)],
                    legit_signer(pki),
                )
            },
            |e| matches!(e, AzureError::CertificateTooLarge { max: 8192, .. }),
        ),
    ]
}

fn look_alike(pki: &TestPki, fake_first: bool) -> Vec<u8> {
    // An attacker CA with the real intermediate's name issues a leaf with the real signer's
    // serial: both certificates match the SignerInfo, so the signer is ambiguous.
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
    let mut bag = vec![pki.azure_leaf.der(), fake_leaf.der()];
    if fake_first {
        bag.swap(0, 1);
    }
    bag.push(pki.azure_intermediate.der());
    with_bag(
        doc("vm-1"),
        &bag,
        Pkcs7Signer::new(&fake_leaf.der(), TestKey::Attacker).azure_digest_quirk(),
    )
}

#[test]
fn every_attack_fails_with_its_own_error() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let mut failures = Vec::new();
    let cases = attacks();
    for c in &cases {
        let trust = match c.trust {
            Trust::Test => trust(&pki),
            Trust::OtherPki => trust(&other),
            Trust::BuiltIn => AzureTrust::builtin(),
        };
        let v = AzureVerifier::new(trust, Arc::new(FixedClock::new(pki.now + c.at)));
        match v.verify(&TestPki::azure_request(&(c.proof)(&pki))) {
            Ok(id) => failures.push(format!("{}: accepted as {id:?}", c.name)),
            Err(e) if !(c.expect)(&e) => failures.push(format!("{}: wrong error: {e}", c.name)),
            Err(e) if e.is_unavailable() => failures.push(format!("{}: not a 401: {e}", c.name)),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(cases.len() >= 25);
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
    // Just inside the signer's validity.
    let req = pki.azure_proof("vm-1");
    assert!(verifier_at(&pki, Duration::minutes(59))
        .verify(&req)
        .is_ok());
}

#[test]
fn signed_attributes_are_accepted() {
    let pki = TestPki::new();
    let der = with_bag(
        doc("vm-1"),
        &[pki.azure_leaf.der(), pki.azure_intermediate.der()],
        Pkcs7Signer::new(&pki.azure_leaf.der(), TestKey::AzureSigner).with_signed_attributes(),
    );
    assert!(verify_der(&pki, &der).is_ok());
}

#[test]
fn intermediates_come_from_the_bag_or_configuration() {
    let pki = TestPki::new();
    let der = with_bag(doc("vm-1"), &[pki.azure_leaf.der()], legit_signer(&pki));
    assert!(matches!(
        verify_der(&pki, &der),
        Err(AzureError::UnknownIssuer(_))
    ));
    let mut t = trust(&pki);
    t.add_intermediates_pem(&pki.azure_intermediate_pem(), "i.pem".as_ref())
        .unwrap();
    let v = AzureVerifier::new(t, Arc::new(FixedClock::new(pki.now)));
    assert!(v.verify(&TestPki::azure_request(&der)).is_ok());
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
        let der = named_leaf_proof(&pki, &[name]);
        assert!(verify_der(&pki, &der).is_ok(), "{name}");
    }
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
}
