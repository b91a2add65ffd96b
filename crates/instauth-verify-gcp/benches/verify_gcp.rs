//! GCP verification cost beside a raw ring RSA-2048 verify of the same signing input.
//!
//! `cargo bench -p instauth-verify-gcp`; the ratios are recorded in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use instauth_testkit::bench::{self, Criterion};
use instauth_testkit::{TestKey, TestPki};
use instauth_verify::FixedClock;
use instauth_verify_gcp::{GcpVerifier, JwkSet, JwksSource};

fn verify(c: &mut Criterion) {
    let pki = TestPki::new();
    let set = JwkSet::from_json(TestPki::gcp_jwks_json().as_bytes()).unwrap();
    let verifier = GcpVerifier::new(
        "coder",
        JwksSource::Static(Arc::new(set)),
        Arc::new(FixedClock::new(pki.now)),
    );
    let req = pki.gcp_jwt("4242424242424242424", "coder");
    // With a static JWKS the verify future never waits: a current-thread runtime polls it
    // in place, adding no cross-thread hand-off to what is measured.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(rt.block_on(verifier.verify(&req)).is_ok());
    // The baseline verifies the same signing input (header.claims) with the same key.
    let (input, _) = req.json_web_token.rsplit_once('.').unwrap();
    let mut cmp = bench::against_raw_rsa(c, "gcp", TestKey::Gcp1, input.as_bytes());
    cmp.subject("verify_identity_jwt", || {
        rt.block_on(verifier.verify(black_box(&req))).unwrap();
    });
    cmp.finish();
}

instauth_testkit::bench_main!(verify);
