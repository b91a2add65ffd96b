//! Real Azure attested documents from coder/coder's tests (`testdata/real-vectors/README.md`),
//! one of the 2022 generation and one of the 2025+ G2 hierarchy, against the built-in trust
//! with no configuration at all.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use instauth_types::AzureInstanceIdentityRequest;
use instauth_verify::{FixedClock, Identity, SystemClock};
use instauth_verify_azure::{AzureError, AzureTrust, AzureVerifier};

const V2022: &str = "coder-attested-public-southcentralus-2022-04-19.p7.b64";
const V2022_AT: &str = "2022-04-19T02:00:00Z";
const V2026: &str = "coder-attested-public-eastus-2026-06-25-g2.p7.b64";
const V2026_AT: &str = "2026-06-25T19:00:00Z";

fn request(file: &str) -> AzureInstanceIdentityRequest {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/real-vectors")
        .join(file);
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

fn builtin_at(t: &str) -> AzureVerifier {
    AzureVerifier::new(AzureTrust::builtin(), at(t))
}

#[test]
fn the_2022_document_verifies_at_its_time_with_the_builtin_trust() {
    let id = builtin_at(V2022_AT)
        .verify(&request(V2022))
        .unwrap()
        .into_inner();
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
fn the_2026_g2_document_verifies_at_its_time_with_the_builtin_trust() {
    let id = builtin_at(V2026_AT)
        .verify(&request(V2026))
        .unwrap()
        .into_inner();
    assert_eq!(
        id,
        Identity::Azure {
            instance_id: "dc18de58-292f-4794-9a5d-a4192bad0039".into(),
            subscription_id: Some("05e8b285-4ce1-46a3-b4c9-f51ba67d6acc".into()),
            location: None,
        }
    );
}

#[test]
fn the_2026_document_also_verifies_through_the_digicert_cross_sign() {
    // Only DigiCert Global Root G2 as anchor: the path must go OCSP 02 → the cross-signed
    // Microsoft TLS RSA Root G2 → DigiCert.
    let mut trust = AzureTrust::builtin();
    let g2 = include_str!("../certs/roots/digicert-global-root-g2.pem");
    trust
        .replace_roots_pem(g2, "digicert-g2.pem".as_ref())
        .unwrap();
    let v = AzureVerifier::new(trust, at(V2026_AT));
    assert!(v.verify(&request(V2026)).is_ok());
}

#[test]
fn both_fail_now_because_they_expired() {
    let v = AzureVerifier::new(AzureTrust::builtin(), Arc::new(SystemClock));
    let err = v.verify(&request(V2022)).unwrap_err();
    assert!(
        matches!(err, AzureError::CertificateExpired { .. }),
        "{err}"
    );
    let err = v.verify(&request(V2026)).unwrap_err();
    assert!(
        matches!(
            err,
            AzureError::CertificateExpired { .. } | AzureError::DocumentExpired { .. }
        ),
        "{err}"
    );
}

#[test]
fn an_unrelated_root_leaves_the_issuer_unknown_with_its_download_url() {
    let g2 = include_str!("../certs/roots/digicert-global-root-g2.pem");
    let v = AzureVerifier::new(AzureTrust::from_roots_pem(g2).unwrap(), at(V2022_AT));
    let AzureError::UnknownIssuer(missing) = v.verify(&request(V2022)).unwrap_err() else {
        panic!("expected UnknownIssuer");
    };
    assert_eq!(
        missing.issuer,
        "CN=Microsoft RSA TLS CA 01,O=Microsoft Corporation,C=US"
    );
    assert_eq!(
        missing.ca_issuers,
        ["http://www.microsoft.com/pki/mscorp/Microsoft%20RSA%20TLS%20CA%2001.crt"]
    );

    let roots = include_str!("../certs/roots/microsoft-rsa-root-ca-2017.pem");
    let v = AzureVerifier::new(AzureTrust::from_roots_pem(roots).unwrap(), at(V2026_AT));
    let AzureError::UnknownIssuer(missing) = v.verify(&request(V2026)).unwrap_err() else {
        panic!("expected UnknownIssuer");
    };
    assert_eq!(
        missing.ca_issuers,
        [
            "http://www.microsoft.com/pkiops/certs/Microsoft%20TLS%20G2%20RSA%20CA%20OCSP%2002.crt",
            "http://caissuers.microsoft.com/pkiops/certs/Microsoft%20TLS%20G2%20RSA%20CA%20OCSP%2002.crt",
        ]
    );
}
