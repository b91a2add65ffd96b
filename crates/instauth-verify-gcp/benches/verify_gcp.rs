//! GCP verification cost beside a raw ring RSA-2048 verify of the same signing input.
//!
//! `cargo bench -p instauth-verify-gcp`; the ratios are recorded in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use instauth_testkit::bench::{interleaved_ratio, print_ratio};
use instauth_testkit::{TestKey, TestPki};
use instauth_verify::FixedClock;
use instauth_verify_gcp::{GcpVerifier, JwkSet, JwksSource};
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

/// Interleaved rounds x calls per batch for the noise-resistant ratio printed first.
const ROUNDS: usize = 40;
const BATCH: usize = 50;

fn bench(c: &mut Criterion) {
    let pki = TestPki::new();
    let set = JwkSet::from_json(TestPki::gcp_jwks_json().as_bytes()).unwrap();
    let verifier = GcpVerifier::new(
        "coder",
        JwksSource::Static(Arc::new(set)),
        Arc::new(FixedClock::new(pki.now)),
    );
    let req = pki.gcp_jwt("4242424242424242424", "coder");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(rt.block_on(verifier.verify(&req)).is_ok());
    let (input, _) = req.json_web_token.rsplit_once('.').unwrap();
    let raw = TestKey::Gcp1.sign_sha256(input.as_bytes());
    let key = TestKey::Gcp1.pkcs1_public_der();

    let r = interleaved_ratio(
        ROUNDS,
        BATCH,
        || {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key)
                .verify(black_box(input.as_bytes()), black_box(&raw))
                .unwrap()
        },
        || {
            rt.block_on(verifier.verify(black_box(&req))).unwrap();
        },
    );
    print_ratio("gcp/verify_identity_jwt", r);

    let mut g = c.benchmark_group("gcp");
    g.bench_function("raw_ring_rsa2048_verify", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key)
                .verify(black_box(input.as_bytes()), black_box(&raw))
                .unwrap()
        })
    });
    g.bench_function("verify_identity_jwt", |b| {
        b.iter(|| rt.block_on(verifier.verify(black_box(&req))).unwrap())
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
