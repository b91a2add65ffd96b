//! AWS verifier against generated proofs: what must pass and every forgery that must not.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use base64::Engine;
use instauth_testkit::{base64_wrapped, Pkcs7Signer, SignedDataBuilder, TestKey, TestPki};
use instauth_types::AwsInstanceIdentityRequest;
use instauth_verify::Identity;
use instauth_verify_aws::{AwsCertificates, AwsError, AwsVerifier};

const REGION: &str = "us-east-1";

fn verifier(pki: &TestPki) -> AwsVerifier {
    let mut certs = AwsCertificates::builtin();
    certs
        .add_pem(&pki.aws_certificates_pem(REGION), None, "test.pem".as_ref())
        .unwrap();
    AwsVerifier::new(certs)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    let compact: String = s.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .unwrap()
}

#[test]
fn valid_signature_and_pkcs7_proofs_verify() {
    let pki = TestPki::new();
    let v = verifier(&pki);
    let expected = Identity::Aws {
        instance_id: "i-0abc".into(),
        account_id: "123456789012".into(),
        region: REGION.into(),
    };
    for req in [
        pki.aws_signature_proof("i-0abc", REGION),
        pki.aws_pkcs7_proof("i-0abc", REGION),
        pki.aws_proof("i-0abc", REGION),
    ] {
        assert_eq!(v.verify(&req).unwrap().into_inner(), expected);
    }
}

#[test]
fn configured_certificates_load_from_a_directory_by_file_name() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let pem = pki
        .aws_certificates_pem("ignored")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("xx-test-9.pem"), pem).unwrap();
    let v = AwsVerifier::from_config(Some(dir.path())).unwrap();
    assert!(v.certificates().regions().contains(&"xx-test-9"));
    assert!(v.verify(&pki.aws_proof("i-1", "xx-test-9")).is_ok());
    // The built-in certificates are still there.
    assert!(v.certificates().regions().contains(&"us-west-2"));
}

#[test]
fn configured_default_applies_to_unknown_regions() {
    let pki = TestPki::new();
    let mut certs = AwsCertificates::empty();
    certs
        .add_pem(&pki.aws_certificates_pem("default"), None, "d.pem".as_ref())
        .unwrap();
    let v = AwsVerifier::new(certs);
    assert!(v
        .verify(&pki.aws_signature_proof("i-1", "zz-new-1"))
        .is_ok());
    assert!(v.verify(&pki.aws_pkcs7_proof("i-1", "zz-new-1")).is_ok());
}

#[test]
fn tampered_document_fails() {
    let pki = TestPki::new();
    let mut req = pki.aws_signature_proof("i-0abc", REGION);
    req.document = req.document.replace("i-0abc", "i-0abd");
    assert!(matches!(
        verifier(&pki).verify(&req),
        Err(AwsError::BadSignature { region }) if region == REGION
    ));
}

#[test]
fn tampered_pkcs7_content_fails() {
    let pki = TestPki::new();
    let signed = TestPki::aws_document("i-0abc", REGION, "123456789012");
    let forged = TestPki::aws_document("i-0abd", REGION, "123456789012");
    let der = SignedDataBuilder::new(forged.into_bytes())
        .signer(
            Pkcs7Signer::new(&pki.aws_cert_2048, TestKey::AwsRegion2048).with_signed_attributes(),
        )
        .build_with_signed_content(signed.as_bytes());
    let req = AwsInstanceIdentityRequest {
        pkcs7: Some(b64(&der)),
        ..Default::default()
    };
    let err = verifier(&pki).verify(&req).unwrap_err();
    assert!(err.to_string().contains("messageDigest"), "{err}");
}

#[test]
fn tampered_signatures_fail() {
    let pki = TestPki::new();
    let v = verifier(&pki);
    let mut req = pki.aws_signature_proof("i-1", REGION);
    let mut sig = unb64(&req.signature);
    sig[10] ^= 1;
    req.signature = b64(&sig);
    assert!(matches!(v.verify(&req), Err(AwsError::BadSignature { .. })));

    let mut req = pki.aws_pkcs7_proof("i-1", REGION);
    let mut der = unb64(req.pkcs7.as_deref().unwrap());
    let last = der.len() - 1; // the signature is the last field of the DER
    der[last] ^= 1;
    req.pkcs7 = Some(b64(&der));
    assert!(matches!(v.verify(&req), Err(AwsError::Pkcs7(_))));
}

#[test]
fn wrong_keys_fail() {
    let pki = TestPki::new();
    let v = verifier(&pki);
    let doc = TestPki::aws_document("i-1", REGION, "1");
    let req = AwsInstanceIdentityRequest {
        signature: TestPki::aws_signature(doc.as_bytes(), TestKey::AwsOther1024),
        document: doc.clone(),
        ..Default::default()
    };
    assert!(matches!(v.verify(&req), Err(AwsError::BadSignature { .. })));
    let req = AwsInstanceIdentityRequest {
        pkcs7: Some(base64_wrapped(
            &pki.aws_pkcs7(doc.as_bytes(), TestKey::AwsOther2048),
        )),
        ..Default::default()
    };
    assert!(matches!(v.verify(&req), Err(AwsError::Pkcs7(_))));
}

#[test]
fn another_regions_certificate_fails() {
    let pki = TestPki::new();
    let v = verifier(&pki);
    // eu-west-1 has AWS's real certificates built in; the test key is not theirs.
    assert!(matches!(
        v.verify(&pki.aws_signature_proof("i-1", "eu-west-1")),
        Err(AwsError::BadSignature { region }) if region == "eu-west-1"
    ));
    assert!(v.verify(&pki.aws_pkcs7_proof("i-1", "eu-west-1")).is_err());
}

#[test]
fn unknown_region_is_a_typed_error_naming_it() {
    let pki = TestPki::new();
    let v = AwsVerifier::new(AwsCertificates::empty());
    let err = v
        .verify(&pki.aws_signature_proof("i-1", "mars-north-1"))
        .unwrap_err();
    assert!(matches!(&err, AwsError::UnsupportedRegion { region } if region == "mars-north-1"));
    assert!(err.to_string().contains("mars-north-1"));
    // Built-in: no rsa2048 default exists, so PKCS#7 from an unknown region is unsupported.
    let err = verifier(&pki)
        .verify(&pki.aws_pkcs7_proof("i-1", "mars-north-1"))
        .unwrap_err();
    assert!(matches!(err, AwsError::UnsupportedRegion { .. }), "{err}");
}

#[test]
fn pkcs7_content_must_equal_document() {
    let pki = TestPki::new();
    let mut req = pki.aws_proof("i-1", REGION);
    req.document = TestPki::aws_document("i-2", REGION, "123456789012");
    req.signature = TestPki::aws_signature(req.document.as_bytes(), TestKey::AwsRegion1024);
    // The detached signature over `document` is valid, but PKCS#7 wins and must match it.
    assert!(matches!(
        verifier(&pki).verify(&req),
        Err(AwsError::DocumentMismatch)
    ));
    // Even one trailing newline differs.
    let mut req = pki.aws_proof("i-1", REGION);
    req.document.push('\n');
    assert!(matches!(
        verifier(&pki).verify(&req),
        Err(AwsError::DocumentMismatch)
    ));
}

#[test]
fn two_signers_fail() {
    let pki = TestPki::new();
    let doc = TestPki::aws_document("i-1", REGION, "1");
    let signer =
        Pkcs7Signer::new(&pki.aws_cert_2048, TestKey::AwsRegion2048).with_signed_attributes();
    let der = SignedDataBuilder::new(doc.into_bytes())
        .signer(signer.clone())
        .signer(signer)
        .build();
    let req = AwsInstanceIdentityRequest {
        pkcs7: Some(b64(&der)),
        ..Default::default()
    };
    let err = verifier(&pki).verify(&req).unwrap_err();
    assert!(err.to_string().contains("2 signers"), "{err}");
}

#[test]
fn duplicate_json_keys_are_rejected() {
    let pki = TestPki::new();
    let doc = "{\"instanceId\":\"i-1\",\"accountId\":\"1\",\"region\":\"us-east-1\",\"instanceId\":\"i-2\"}";
    let req = AwsInstanceIdentityRequest {
        document: doc.into(),
        signature: TestPki::aws_signature(doc.as_bytes(), TestKey::AwsRegion1024),
        ..Default::default()
    };
    assert!(matches!(
        verifier(&pki).verify(&req),
        Err(AwsError::MalformedDocument { .. })
    ));
}

#[test]
fn garbage_and_truncated_inputs_fail_cleanly() {
    let pki = TestPki::new();
    let v = verifier(&pki);
    let good = pki.aws_proof("i-1", REGION);
    let garbage = [
        "",
        " ",
        "%%%",
        "AAAA",
        "e30=",
        "not base64!",
        "MIAGCSqGSIb3DQEHAqCA",
    ];
    for g in garbage {
        let req = AwsInstanceIdentityRequest {
            pkcs7: Some(g.into()),
            document: g.into(),
            signature: g.into(),
            agent_name: None,
        };
        assert!(v.verify(&req).is_err(), "{g:?}");
        let mut req = good.clone();
        req.pkcs7 = None;
        req.signature = g.into();
        assert!(v.verify(&req).is_err(), "{g:?}");
        let mut req = good.clone();
        req.pkcs7 = None;
        req.document = g.into();
        assert!(v.verify(&req).is_err(), "{g:?}");
    }
    for doc in [
        "{}",
        "[]",
        "null",
        "{\"region\":1}",
        "{\"instanceId\":\"\",\"accountId\":\"1\",\"region\":\"us-east-1\"}",
    ] {
        let req = AwsInstanceIdentityRequest {
            document: doc.into(),
            signature: TestPki::aws_signature(doc.as_bytes(), TestKey::AwsRegion1024),
            ..Default::default()
        };
        assert!(v.verify(&req).is_err(), "{doc}");
    }
    let der = unb64(good.pkcs7.as_deref().unwrap());
    for len in 0..der.len() {
        let req = AwsInstanceIdentityRequest {
            pkcs7: Some(b64(&der[..len])),
            ..Default::default()
        };
        assert!(v.verify(&req).is_err(), "truncated at {len}");
    }
    let b64_text = good.pkcs7.clone().unwrap();
    for len in (1..b64_text.len()).step_by(7) {
        let req = AwsInstanceIdentityRequest {
            pkcs7: Some(b64_text[..len].to_string()),
            ..Default::default()
        };
        assert!(v.verify(&req).is_err(), "truncated base64 at {len}");
    }
}

#[test]
fn errors_never_carry_proof_material() {
    let pki = TestPki::new();
    let mut req = pki.aws_signature_proof("i-1", REGION);
    let sig = req.signature.clone();
    req.document = req.document.replace("i-1", "i-2");
    let err = verifier(&pki).verify(&req).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&sig[..16]));
    assert!(!text.contains("accountId"));
}
