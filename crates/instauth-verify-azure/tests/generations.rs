//! Test-PKI proofs shaped like each Azure issuing-CA generation (see certs/README.md).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use chrono::Duration;
use instauth_testkit::azure::{self, AzureGenerations};
use instauth_testkit::TestKey;
use instauth_verify::trust::{TrustRole, TrustSource};
use instauth_verify::{FixedClock, Identity};
use instauth_verify_azure::{AzureError, AzureTrust, AzureVerifier};

/// A verifier with `roots` as anchors and `intermediates` configured, at the PKI's time.
fn verifier(g: &AzureGenerations, roots: &[Vec<u8>], intermediates: &[Vec<u8>]) -> AzureVerifier {
    let mut trust = AzureTrust::from_roots_pem(&azure::pem(roots)).unwrap();
    if !intermediates.is_empty() {
        trust
            .add_intermediates_pem(&azure::pem(intermediates), "test.pem".as_ref())
            .unwrap();
    }
    AzureVerifier::new(trust, Arc::new(FixedClock::new(g.now)))
}

fn vm(id: &Identity) -> &str {
    id.instance_id()
}

#[test]
fn g2_ocsp_ca_through_the_cross_signed_root_to_digicert_g2() {
    let g = AzureGenerations::new();
    let leaf = g.signer(&g.g2_ocsp_ca, 1, &[]);
    let req = azure::proof(&leaf, TestKey::AzureSigner, g.document("vm-g2").as_bytes());
    // Only the DigiCert-style anchor: the path needs the cross-sign.
    let v = verifier(
        &g,
        &[g.digicert_g2.der()],
        &[g.g2_ocsp_ca.der(), g.tls_root_g2_xsign.clone()],
    );
    assert_eq!(vm(&v.verify(&req).unwrap()), "vm-g2");
    // Without the cross-sign it cannot reach that anchor.
    let v = verifier(&g, &[g.digicert_g2.der()], &[g.g2_ocsp_ca.der()]);
    assert!(matches!(
        v.verify(&req),
        Err(AzureError::UntrustedChain { .. })
    ));
    // With the G2 root itself as anchor, the issuing CA suffices.
    let v = verifier(&g, &[g.tls_root_g2.der()], &[g.g2_ocsp_ca.der()]);
    assert_eq!(vm(&v.verify(&req).unwrap()), "vm-g2");
}

#[test]
fn g2_chain_may_also_travel_in_the_bag() {
    let g = AzureGenerations::new();
    let leaf = g.signer(&g.g2_ocsp_ca, 2, &[]);
    let der = azure::proof_der(
        &leaf,
        TestKey::AzureSigner,
        g.document("vm-bag").as_bytes(),
        &[g.g2_ocsp_ca.der(), g.tls_root_g2_xsign.clone()],
    );
    let v = verifier(&g, &[g.digicert_g2.der()], &[]);
    let req = instauth_testkit::TestPki::azure_request(&der);
    assert_eq!(vm(&v.verify(&req).unwrap()), "vm-bag");
}

#[test]
fn azure_rsa_tls_issuing_ca_to_the_rsa_root_2017() {
    let g = AzureGenerations::new();
    let leaf = g.signer(&g.azure_rsa_tls_ca, 3, &[]);
    let req = azure::proof(&leaf, TestKey::AzureSigner, g.document("vm-rsa").as_bytes());
    let v = verifier(&g, &[g.rsa_root_2017.der()], &[g.azure_rsa_tls_ca.der()]);
    assert_eq!(vm(&v.verify(&req).unwrap()), "vm-rsa");
}

#[test]
fn one_trust_serves_every_generation_at_once() {
    let g = AzureGenerations::new();
    let v = verifier(
        &g,
        &[
            g.digicert_g2.der(),
            g.tls_root_g2.der(),
            g.rsa_root_2017.der(),
        ],
        &[
            g.g2_ocsp_ca.der(),
            g.tls_root_g2_xsign.clone(),
            g.azure_rsa_tls_ca.der(),
        ],
    );
    for (i, ca) in [&g.g2_ocsp_ca, &g.azure_rsa_tls_ca].into_iter().enumerate() {
        let leaf = g.signer(ca, 10 + i as u64, &[]);
        let req = azure::proof(&leaf, TestKey::AzureSigner, g.document("vm").as_bytes());
        assert!(v.verify(&req).is_ok(), "generation {i}");
    }
    let listed = v.trust_certificates();
    assert_eq!(listed.len(), 6);
    assert_eq!(
        listed.iter().filter(|c| c.role == TrustRole::Root).count(),
        3
    );
    assert!(listed
        .iter()
        .any(|c| c.source == TrustSource::File("test.pem".into())));
}

#[test]
fn a_2019_document_without_subscription_verifies() {
    let g = AzureGenerations::new();
    let leaf = g.signer(&g.azure_rsa_tls_ca, 4, &[]);
    let content = azure::document_2019("vm-2019", g.now - Duration::minutes(1));
    assert!(!content.contains("subscriptionId"));
    let req = azure::proof(&leaf, TestKey::AzureSigner, content.as_bytes());
    let v = verifier(&g, &[g.rsa_root_2017.der()], &[g.azure_rsa_tls_ca.der()]);
    let id = v.verify(&req).unwrap().into_inner();
    assert_eq!(
        id,
        Identity::Azure {
            instance_id: "vm-2019".into(),
            subscription_id: None,
            location: None,
        }
    );
    assert_eq!(
        serde_json::to_value(&id).unwrap(),
        serde_json::json!({"provider": "azure", "instance_id": "vm-2019"})
    );
}

#[test]
fn a_reissued_ca_of_the_same_name_is_an_unknown_issuer_not_a_bad_signature() {
    // Microsoft re-keys an issuing CA under the same name: the authority key identifier of
    // the signer no longer matches the known certificate's, so the issuer is reported as
    // unknown (and can be fetched) instead of failing the signature check.
    let g = AzureGenerations::new();
    let rekeyed = azure::intermediate(
        "instauth test TLS G2 RSA CA OCSP 02",
        g.ca_validity,
        200,
        &g.tls_root_g2,
        &[],
    );
    let url = "http://www.microsoft.com/pkiops/certs/ocsp02-rekeyed.crt";
    let leaf = g.signer(&rekeyed, 5, &[url]);
    let req = azure::proof(&leaf, TestKey::AzureSigner, g.document("vm").as_bytes());
    let v = verifier(&g, &[g.tls_root_g2.der()], &[g.g2_ocsp_ca.der()]);
    let Err(AzureError::UnknownIssuer(missing)) = v.verify(&req) else {
        panic!("expected UnknownIssuer");
    };
    assert_eq!(missing.ca_issuers, [url]);
    assert!(missing
        .issuer
        .contains("CN=instauth test TLS G2 RSA CA OCSP 02"));
}
