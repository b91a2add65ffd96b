//! The real Azure attested document from coder/coder's tests (`testdata/real-vectors/README.md`).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use instauth_types::AzureInstanceIdentityRequest;
use instauth_verify::{FixedClock, Identity, SystemClock};
use instauth_verify_azure::{AzureError, AzureTrust, AzureVerifier};

fn request() -> AzureInstanceIdentityRequest {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/real-vectors/coder-attested-public-southcentralus-2022-04-19.p7.b64");
    AzureInstanceIdentityRequest {
        signature: std::fs::read_to_string(path).unwrap(),
        encoding: "pkcs7".into(),
        agent_name: None,
    }
}

fn at(t: &str) -> Arc<FixedClock> {
    Arc::new(FixedClock::new(
        DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc),
    ))
}

#[test]
fn verifies_at_its_pinned_time() {
    let verifier = AzureVerifier::new(AzureTrust::builtin(), at("2022-04-19T02:00:00Z"));
    let id = verifier.verify(&request()).unwrap().into_inner();
    assert_eq!(
        id,
        Identity::Azure {
            instance_id: "bd8e7443-24a0-41f3-b949-8baf4fd1c573".into(),
            subscription_id: Some("5f130ffc-0a3e-4795-b691-4f56a12a5547".into()),
            location: None,
        }
    );
}

#[test]
fn fails_now_because_the_chain_expired() {
    let verifier = AzureVerifier::new(AzureTrust::builtin(), Arc::new(SystemClock));
    let err = verifier.verify(&request()).unwrap_err();
    assert!(
        matches!(err, AzureError::CertificateExpired { .. }),
        "{err}"
    );
}

#[test]
fn fails_when_roots_are_replaced_by_an_unrelated_root() {
    let g2 = include_str!("../certs/root-digicert-global-root-g2.pem");
    let verifier = AzureVerifier::new(
        AzureTrust::from_roots_pem(g2).unwrap(),
        at("2022-04-19T02:00:00Z"),
    );
    let err = verifier.verify(&request()).unwrap_err();
    assert!(matches!(err, AzureError::UntrustedChain { .. }), "{err}");
}
