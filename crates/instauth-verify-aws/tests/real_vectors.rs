//! Real AWS proofs from public test suites (`testdata/real-vectors/README.md`).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use instauth_types::AwsInstanceIdentityRequest;
use instauth_verify::Identity;
use instauth_verify_aws::{AwsCertificates, AwsError, AwsVerifier};
use std::path::PathBuf;

fn vector(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/real-vectors")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const DOC: &str = "coder-iid-rsa1024-us-east-1-i-076e9b91f7c420782.document.json";
const SIG: &str = "coder-iid-rsa1024-us-east-1-i-076e9b91f7c420782.signature.b64";
const P7: &str = "teleport-iid-rsa2048-us-west-2-i-078517ca8a70a1dde.p7.b64";

fn signature_request() -> AwsInstanceIdentityRequest {
    AwsInstanceIdentityRequest {
        document: vector(DOC),
        signature: vector(SIG),
        ..Default::default()
    }
}

#[test]
fn coder_rsa1024_signature_vector_verifies() {
    let verifier = AwsVerifier::from_config(None).unwrap();
    let id = verifier.verify(&signature_request()).unwrap();
    let Identity::Aws {
        instance_id,
        region,
        account_id,
    } = id.into_inner()
    else {
        panic!("not an AWS identity")
    };
    assert_eq!(instance_id, "i-076e9b91f7c420782");
    assert_eq!(region, "us-east-1");
    assert!(!account_id.is_empty());
}

#[test]
fn coder_vector_also_verifies_with_only_the_default_certificate() {
    let mut certs = AwsCertificates::empty();
    let default_pem = include_str!("../certs/rsa1024/default.pem");
    certs
        .add_pem(default_pem, Some("default"), "default.pem".as_ref())
        .unwrap();
    let verifier = AwsVerifier::new(certs);
    assert!(verifier.verify(&signature_request()).is_ok());
}

#[test]
fn teleport_rsa2048_pkcs7_vector_verifies() {
    let verifier = AwsVerifier::from_config(None).unwrap();
    let req = AwsInstanceIdentityRequest {
        pkcs7: Some(vector(P7)),
        ..Default::default()
    };
    let id = verifier.verify(&req).unwrap();
    assert_eq!(id.instance_id(), "i-078517ca8a70a1dde");
    assert_eq!(
        serde_json::to_value(&*id).unwrap()["region"],
        serde_json::json!("us-west-2")
    );
}

#[test]
fn teleport_vector_fails_with_another_regions_certificate() {
    let mut certs = AwsCertificates::builtin();
    certs
        .add_pem(
            include_str!("../certs/rsa2048/us-east-1.pem"),
            Some("us-west-2"),
            "us-west-2.pem".as_ref(),
        )
        .unwrap();
    let req = AwsInstanceIdentityRequest {
        pkcs7: Some(vector(P7)),
        ..Default::default()
    };
    let err = AwsVerifier::new(certs).verify(&req).unwrap_err();
    assert!(matches!(err, AwsError::Pkcs7(_)), "{err}");
}
