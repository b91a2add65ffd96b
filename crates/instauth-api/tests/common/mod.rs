//! What the API's integration tests share: one test PKI per test binary, and verifiers that
//! trust it.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use instauth_api::Verifiers;
use instauth_testkit::TestPki;

/// The AWS region whose test certificates every verifier trusts.
pub const REGION: &str = "us-test-1";

/// The test PKI, made once per test binary (key generation is slow).
pub fn pki() -> Arc<TestPki> {
    static PKI: std::sync::OnceLock<Arc<TestPki>> = std::sync::OnceLock::new();
    PKI.get_or_init(|| Arc::new(TestPki::new())).clone()
}

/// Verifiers trusting `pki`: AWS certificates of `regions`, its Azure root, its Google key set
/// for `audience`, on the system clock.
pub fn verifiers(pki: &TestPki, regions: &[&str], audience: &str) -> Verifiers {
    let mut certs = instauth_verify_aws::AwsCertificates::empty();
    for region in regions {
        certs
            .add_pem(&pki.aws_certificates_pem(region), None, Path::new("test"))
            .unwrap();
    }
    let azure = instauth_verify_azure::AzureTrust::from_roots_pem(&pki.azure_root_pem()).unwrap();
    let jwks = instauth_verify_gcp::JwkSet::from_json(TestPki::gcp_jwks_json().as_bytes()).unwrap();
    let clock: Arc<dyn instauth_verify::Clock> = Arc::new(instauth_verify::SystemClock);
    Verifiers::new(
        instauth_verify_aws::AwsVerifier::new(certs),
        instauth_verify_azure::AzureVerifier::new(azure, clock.clone()),
        instauth_verify_gcp::GcpVerifier::new(
            audience,
            instauth_verify_gcp::JwksSource::Static(Arc::new(jwks)),
            clock,
        ),
    )
}
