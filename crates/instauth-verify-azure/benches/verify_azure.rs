//! Azure verification cost beside a raw ring RSA-2048 verify of the same content.
//!
//! Azure also verifies the certificate chain (two more signatures), so no 1.5x target applies.
//! `cargo bench -p instauth-verify-azure`; the ratios are recorded in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use instauth_testkit::bench::{interleaved_ratio, print_ratio};
use instauth_testkit::{TestKey, TestPki};
use instauth_verify::FixedClock;
use instauth_verify_azure::{AzureTrust, AzureVerifier};
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

/// Interleaved rounds x calls per batch for the noise-resistant ratio printed first.
const ROUNDS: usize = 40;
const BATCH: usize = 50;

fn bench(c: &mut Criterion) {
    let pki = TestPki::new();
    let verifier = AzureVerifier::new(
        AzureTrust::from_roots_pem(&pki.azure_root_pem()).unwrap(),
        Arc::new(FixedClock::new(pki.now)),
    );
    let req = pki.azure_proof("bd8e7443-24a0-41f3-b949-8baf4fd1c573");
    assert!(verifier.verify(&req).is_ok());
    let content = TestPki::azure_document("bd8e7443-24a0-41f3-b949-8baf4fd1c573", "sub-1");
    let raw = TestKey::AzureSigner.sign_sha256(content.as_bytes());
    let key = TestKey::AzureSigner.pkcs1_public_der();

    let r = interleaved_ratio(
        ROUNDS,
        BATCH,
        || {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key)
                .verify(black_box(content.as_bytes()), black_box(&raw))
                .unwrap()
        },
        || {
            verifier.verify(black_box(&req)).unwrap();
        },
    );
    print_ratio("azure/verify_attested_document", r);

    let mut g = c.benchmark_group("azure");
    g.bench_function("raw_ring_rsa2048_verify", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key)
                .verify(black_box(content.as_bytes()), black_box(&raw))
                .unwrap()
        })
    });
    g.bench_function("verify_attested_document", |b| {
        b.iter(|| verifier.verify(black_box(&req)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
