//! GCP: arbitrary bytes as a compact JWT (header, RS256 pinning, claims) and as a JWKS.
//! Must never panic.
#![no_main]

use instauth_verify_gcp::jwt::UnverifiedJwt;
use instauth_verify_gcp::JwkSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = JwkSet::from_json(data);
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    // The test key `gcp-key-1` of instauth-testkit, so that signature checking and claim parsing are reached.
    const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"k","alg":"RS256","use":"sig","n":"mBEqG4olqlak7L1a6xglYGdNAh185_3j3i-p6FjK3WIIVVbhMmMxh9uTkYai8skPA0e4J-Ic3o7yO7doWVUIKCzzCp1ClqixsJCQh8QB3uE6j2hmmZ4oLjPQLSGDPzP6W8cs1f02tErPC8b6pOPN0g-2zcQ9aXdZ6QePWE8bEtnagCLYwXsX6316V1ojxP2mFYkZOa3Zo_WJZrT_18-iYKKoq1lLeUWCYlrjR3UnELfAAUv-m87x_qBat8kuxphNCVgQ6TJLA8tia6KaS-7HSaYDeNKZDkqPZSbf8n3q2BXQw5S1xjHuUhCDTWoQsJVc6Ylj0OfJSKSuaeWgasICwQ","e":"AQAB"}]}"#;
    if let Ok(jwt) = UnverifiedJwt::parse(token) {
        if let Ok(set) = JwkSet::from_json(JWKS.as_bytes()) {
            if let Some(key) = set.get(jwt.kid()) {
                if let Ok(claims) = jwt.verify_signature(&key) {
                    let _ = claims.check("coder", chrono::DateTime::UNIX_EPOCH);
                }
            }
        }
    }
});
