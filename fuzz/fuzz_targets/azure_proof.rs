//! Azure: arbitrary bytes as an attested-data PKCS#7, through the full verifier (name, chain
//! and signature checks at a fixed time). Must never panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use instauth_verify::FixedClock;
use instauth_verify_azure::{AzureTrust, AzureVerifier};
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static AzureVerifier {
    static V: OnceLock<AzureVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let at = chrono::DateTime::from_timestamp(1_650_333_600, 0).unwrap_or_default();
        AzureVerifier::new(AzureTrust::builtin(), Arc::new(FixedClock::new(at)))
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = verifier().verify_pkcs7_der(data);
});
