//! AWS verification cost beside a raw ring RSA verify of the same key size.
//!
//! `cargo bench -p instauth-verify-aws`; the ratios are recorded in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use instauth_testkit::bench::{self, Criterion};
use instauth_testkit::{TestKey, TestPki};
use instauth_verify_aws::{AwsCertificates, AwsVerifier};

fn verify(c: &mut Criterion) {
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

    let mut rsa2048 = bench::against_raw_rsa(c, "aws", TestKey::AwsRegion2048, doc.as_bytes());
    rsa2048.subject("verify_rsa2048_pkcs7", || {
        verifier.verify(black_box(&pkcs7)).unwrap();
    });
    rsa2048.subject("verify_rsa2048_pkcs7_real_ber", || {
        verifier.verify(black_box(&real)).unwrap();
    });
    rsa2048.finish();
    let mut rsa1024 = bench::against_raw_rsa(c, "aws", TestKey::AwsRegion1024, doc.as_bytes());
    rsa1024.subject("verify_signature_rsa1024", || {
        verifier.verify(black_box(&sig)).unwrap();
    });
    rsa1024.finish();
}

instauth_testkit::bench_main!(verify);
