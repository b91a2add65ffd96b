//! AWS: arbitrary bytes as a PKCS#7 body (BER normaliser, CMS decoder, signer checks) and as an
//! identity document with a detached signature. Must never panic.
#![no_main]

use std::sync::OnceLock;

use instauth_verify::pkcs7::UnverifiedSignedData;
use instauth_verify_aws::AwsVerifier;
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static AwsVerifier {
    static V: OnceLock<AwsVerifier> = OnceLock::new();
    V.get_or_init(|| AwsVerifier::new(instauth_verify_aws::AwsCertificates::builtin()))
}

fuzz_target!(|data: &[u8]| {
    let _ = instauth_verify::ber::ber_to_der(data);
    if let Ok(signed) = UnverifiedSignedData::parse(data) {
        if let Ok(signer) = signed.single_signer() {
            let _ = signed.signer_certificate(signer);
        }
    }
    let v = verifier();
    let _ = v.verify_signature(data, "AAAA");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = v.verify_pkcs7(text, b"");
    }
});
