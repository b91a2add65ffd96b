//! AWS verification cost beside a raw ring RSA verify of the same key size.
//!
//! `cargo bench -p instauth-verify-aws`; the ratios are recorded in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use instauth_testkit::bench::{interleaved_ratio, print_ratio};
use instauth_testkit::{TestKey, TestPki};
use instauth_verify_aws::{AwsCertificates, AwsVerifier};
use ring::signature::{
    UnparsedPublicKey, RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256,
};

/// Interleaved rounds x calls per batch for the noise-resistant ratio printed first.
const ROUNDS: usize = 40;
const BATCH: usize = 50;

fn bench(c: &mut Criterion) {
    let pki = TestPki::new();
    let mut certs = AwsCertificates::builtin();
    certs
        .add_pem(
            &pki.aws_certificates_pem("us-east-1"),
            None,
            "bench.pem".as_ref(),
        )
        .unwrap();
    let verifier = AwsVerifier::new(certs);
    let pkcs7 = pki.aws_pkcs7_proof("i-0123456789abcdef0", "us-east-1");
    let sig = pki.aws_signature_proof("i-0123456789abcdef0", "us-east-1");
    assert!(verifier.verify(&pkcs7).is_ok() && verifier.verify(&sig).is_ok());

    let doc = TestPki::aws_document("i-0123456789abcdef0", "us-east-1", "123456789012");
    let raw2048 = TestKey::AwsRegion2048.sign_sha256(doc.as_bytes());
    let key2048 = TestKey::AwsRegion2048.pkcs1_public_der();
    let raw1024 = TestKey::AwsRegion1024.sign_sha256(doc.as_bytes());
    let key1024 = TestKey::AwsRegion1024.pkcs1_public_der();

    // AWS's own BER encoding (indefinite lengths, chunked content) pays for normalisation.
    let real = instauth_types::AwsInstanceIdentityRequest {
        pkcs7: Some(
            std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../testdata/real-vectors/teleport-iid-rsa2048-us-west-2-i-078517ca8a70a1dde.p7.b64"
            ))
            .unwrap(),
        ),
        ..Default::default()
    };
    assert!(verifier.verify(&real).is_ok());
    let r = interleaved_ratio(
        ROUNDS,
        BATCH,
        || {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key2048)
                .verify(black_box(doc.as_bytes()), black_box(&raw2048))
                .unwrap()
        },
        || {
            verifier.verify(black_box(&pkcs7)).unwrap();
        },
    );
    print_ratio("aws/verify_rsa2048_pkcs7", r);
    let r = interleaved_ratio(
        ROUNDS,
        BATCH,
        || {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key2048)
                .verify(black_box(doc.as_bytes()), black_box(&raw2048))
                .unwrap()
        },
        || {
            verifier.verify(black_box(&real)).unwrap();
        },
    );
    print_ratio("aws/verify_rsa2048_pkcs7_real_ber", r);
    let r = interleaved_ratio(
        ROUNDS,
        BATCH,
        || {
            UnparsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, &key1024)
                .verify(black_box(doc.as_bytes()), black_box(&raw1024))
                .unwrap()
        },
        || {
            verifier.verify(black_box(&sig)).unwrap();
        },
    );
    print_ratio("aws/verify_signature_rsa1024", r);

    let mut g = c.benchmark_group("aws");
    g.bench_function("raw_ring_rsa2048_verify", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key2048)
                .verify(black_box(doc.as_bytes()), black_box(&raw2048))
                .unwrap()
        })
    });
    g.bench_function("verify_rsa2048_pkcs7", |b| {
        b.iter(|| verifier.verify(black_box(&pkcs7)).unwrap())
    });
    g.bench_function("raw_ring_rsa1024_verify", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, &key1024)
                .verify(black_box(doc.as_bytes()), black_box(&raw1024))
                .unwrap()
        })
    });
    g.bench_function("verify_signature_rsa1024", |b| {
        b.iter(|| verifier.verify(black_box(&sig)).unwrap())
    });
    g.bench_function("verify_rsa2048_pkcs7_real_ber", |b| {
        b.iter(|| verifier.verify(black_box(&real)).unwrap())
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
