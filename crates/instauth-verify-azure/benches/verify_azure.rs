//! Azure verification cost beside a raw ring RSA-2048 verify of the same content.
//!
//! Azure also verifies the certificate chain (two more signatures), so no 1.5x target applies.
//! `cargo bench -p instauth-verify-azure`; the ratios are recorded in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use instauth_testkit::bench::{self, Criterion};
use instauth_testkit::{TestKey, TestPki};
use instauth_verify::FixedClock;
use instauth_verify_azure::{AzureTrust, AzureVerifier};

fn verify(c: &mut Criterion) {
    let pki = TestPki::new();
    let verifier = AzureVerifier::new(
        AzureTrust::from_roots_pem(&pki.azure_root_pem()).unwrap(),
        Arc::new(FixedClock::new(pki.now)),
    );
    let req = pki.azure_proof("bd8e7443-24a0-41f3-b949-8baf4fd1c573");
    assert!(verifier.verify(&req).is_ok());
    let content = TestPki::azure_document("bd8e7443-24a0-41f3-b949-8baf4fd1c573", "sub-1");
    let mut cmp = bench::against_raw_rsa(c, "azure", TestKey::AzureSigner, content.as_bytes());
    cmp.subject("verify_attested_document", || {
        verifier.verify(black_box(&req)).unwrap();
    });
    cmp.finish();
}

instauth_testkit::bench_main!(verify);
