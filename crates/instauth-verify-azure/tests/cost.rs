//! No proof can make verification expensive: hostile certificate bags are rejected within a
//! small, measured CPU budget (thread CPU time, not wall time, so other load does not count).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;
use std::time::Duration;

use instauth_testkit::azure::{hostile_proof, HostileBag};
use instauth_testkit::cpu::mean_cpu_time;
use instauth_testkit::TestPki;
use instauth_verify::FixedClock;
use instauth_verify_azure::{AzureError, AzureTrust, AzureVerifier, MAX_BAG_CERTIFICATES};

/// The bound of issue 9, per verification.
const BUDGET: Duration = Duration::from_millis(20);
const RUNS: u32 = 20;

fn verifier(pki: &TestPki) -> AzureVerifier {
    let mut trust = AzureTrust::builtin();
    trust
        .replace_roots_pem(&pki.azure_root_pem(), "test-root.pem".as_ref())
        .unwrap();
    trust
        .add_intermediates_pem(&pki.azure_intermediate_pem(), "test-ca.pem".as_ref())
        .unwrap();
    AzureVerifier::new(trust, Arc::new(FixedClock::new(pki.now)))
}

fn content(pki: &TestPki) -> Vec<u8> {
    TestPki::azure_document_at("vm-1", "sub-1", pki.now).into_bytes()
}

#[test]
fn a_bag_of_ten_self_issued_cas_is_rejected_before_any_signature_work() {
    let pki = TestPki::new();
    let v = verifier(&pki);
    let (req, _) = hostile_proof(
        HostileBag::SelfIssued(10),
        pki.azure_leaf_validity,
        "unused",
        &content(&pki),
    );
    assert!(
        req.signature.len() < 64 * 1024,
        "{} bytes",
        req.signature.len()
    );
    let (cpu, result) = mean_cpu_time(RUNS, || v.verify(&req));
    assert!(
        matches!(
            result,
            Err(AzureError::CertificateBagTooLarge { count: 11, max: 4 })
        ),
        "{result:?}"
    );
    println!("ten self-issued CAs: {cpu:?} CPU per verification");
    assert!(cpu < BUDGET, "{cpu:?} of CPU");
}

#[test]
fn the_largest_bags_allowed_stay_cheap() {
    let pki = TestPki::new();
    let v = verifier(&pki);
    let cas = MAX_BAG_CERTIFICATES - 1;
    for (shape, y_name) in [
        (HostileBag::SelfIssued(cas), "unused"),
        // Names alternating with the trusted root's, so that paths end at an anchor and
        // signatures are checked.
        (HostileBag::Cycle(cas), "instauth test Azure root"),
        (HostileBag::Cycle(cas), "instauth test hostile other"),
    ] {
        let (req, _) = hostile_proof(shape, pki.azure_leaf_validity, y_name, &content(&pki));
        let (cpu, result) = mean_cpu_time(RUNS, || v.verify(&req));
        assert!(
            matches!(
                result,
                Err(AzureError::UnknownIssuer(_) | AzureError::UntrustedChain { .. })
            ),
            "{shape:?}: {result:?}"
        );
        println!("{shape:?} ({y_name}): {cpu:?} CPU per verification");
        assert!(cpu < BUDGET, "{shape:?}: {cpu:?} of CPU");
    }
}

#[test]
fn a_valid_proof_costs_a_few_signature_checks() {
    let pki = TestPki::new();
    let v = verifier(&pki);
    let req = pki.azure_proof("vm-1");
    let (cpu, result) = mean_cpu_time(RUNS, || v.verify(&req));
    assert!(result.is_ok(), "{result:?}");
    println!("valid proof: {cpu:?} CPU per verification");
    assert!(cpu < BUDGET, "{cpu:?} of CPU");
}
