//! What parsing an exchange body costs, and what of it the agent key fields' flattening adds.
//!
//! The exchange endpoints parse `ExchangeRequest<R>`: the proof's fields and the agent key
//! fields side by side in one object, with `#[serde(flatten)]`, which makes serde buffer the
//! object's entries before handing them to the two structs. The baseline parses the same bytes
//! straight into the proof's struct. `cargo bench -p instauth-api --bench exchange_body`; the
//! ratio is recorded in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use instauth_testkit::bench::{Comparison, Criterion};
use instauth_testkit::TestPki;
use instauth_types::{AwsInstanceIdentityRequest, ExchangeRequest};

fn parse(c: &mut Criterion) {
    // The body the load test sends: document, RSA-1024 signature, wrapped PKCS#7, a name.
    let mut proof = TestPki::new().aws_proof("i-0123456789abcdef0", "us-east-1");
    proof.agent_name = Some("main".into());
    let body = serde_json::to_vec(&proof).unwrap();
    let flattened: ExchangeRequest<AwsInstanceIdentityRequest> =
        serde_json::from_slice(&body).unwrap();
    assert_eq!(flattened.body, proof);
    assert!(flattened.agent_key.is_empty());

    let mut cmp = Comparison::new(c, "exchange_body", "plain_aws", || {
        let r: AwsInstanceIdentityRequest = serde_json::from_slice(black_box(&body)).unwrap();
        black_box(r);
    });
    cmp.subject("flattened_aws", || {
        let r: ExchangeRequest<AwsInstanceIdentityRequest> =
            serde_json::from_slice(black_box(&body)).unwrap();
        black_box(r);
    });
    cmp.finish();
}

instauth_testkit::bench_main!(parse);
