//! GCP verifier against generated tokens: what must pass and every forgery that must not.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use base64::Engine;
use chrono::Duration;
use instauth_testkit::{
    jwt_signing_input, sign_jwt_hs256, sign_jwt_rs256, sign_jwt_with_header, TestKey, TestPki,
    GCP_KID_1,
};
use instauth_types::GoogleInstanceIdentityRequest;
use instauth_verify::{FixedClock, Identity};
use instauth_verify_gcp::{GcpError, GcpVerifier, JwkSet, JwksSource};
use serde_json::json;

const AUD: &str = "coder";

fn verifier_at(pki: &TestPki, offset: Duration) -> GcpVerifier {
    let set = JwkSet::from_json(TestPki::gcp_jwks_json().as_bytes()).unwrap();
    GcpVerifier::new(
        AUD,
        JwksSource::Static(Arc::new(set)),
        Arc::new(FixedClock::new(pki.now + offset)),
    )
}

fn req(token: String) -> GoogleInstanceIdentityRequest {
    GoogleInstanceIdentityRequest {
        json_web_token: token,
        agent_name: None,
    }
}

async fn verify(pki: &TestPki, token: String) -> Result<Identity, GcpError> {
    verifier_at(pki, Duration::zero())
        .verify(&req(token))
        .await
        .map(|v| v.into_inner())
}

fn claims(pki: &TestPki) -> serde_json::Value {
    TestPki::gcp_claims("4242", AUD, pki.now)
}

#[tokio::test]
async fn valid_token_verifies() {
    let pki = TestPki::new();
    let id = verifier_at(&pki, Duration::zero())
        .verify(&pki.gcp_jwt("4242", AUD))
        .await
        .unwrap();
    assert_eq!(
        id.into_inner(),
        Identity::Gcp {
            instance_id: "4242".into(),
            project_id: "test-project".into(),
            zone: "us-central1-a".into(),
        }
    );
}

#[tokio::test]
async fn short_issuer_form_is_accepted() {
    let pki = TestPki::new();
    let mut c = claims(&pki);
    c["iss"] = json!("accounts.google.com");
    assert!(verify(&pki, sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &c))
        .await
        .is_ok());
}

#[tokio::test]
async fn wrong_audience_fails_with_evidence() {
    let pki = TestPki::new();
    let err = verify(&pki, pki.gcp_jwt("4242", "someone-else").json_web_token)
        .await
        .unwrap_err();
    match err {
        GcpError::WrongAudience { expected, actual } => {
            assert_eq!(expected, AUD);
            assert_eq!(actual, "someone-else");
        }
        other => panic!("{other}"),
    }
    let mut c = claims(&pki);
    c["aud"] = json!([AUD, "other"]);
    assert!(matches!(
        verify(&pki, sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &c)).await,
        Err(GcpError::WrongAudience { .. })
    ));
    c["aud"] = json!("coder2");
    assert!(verify(&pki, sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &c))
        .await
        .is_err());
}

#[tokio::test]
async fn wrong_issuer_fails() {
    let pki = TestPki::new();
    for iss in [
        "https://evil.example.com",
        "https://accounts.google.com/",
        "",
        "google.com",
    ] {
        let mut c = claims(&pki);
        c["iss"] = json!(iss);
        assert!(
            matches!(
                verify(&pki, sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &c)).await,
                Err(GcpError::WrongIssuer { .. })
            ),
            "{iss}"
        );
    }
}

#[tokio::test]
async fn expiry_and_issue_time_are_checked_with_leeway() {
    let pki = TestPki::new();
    let token = pki.gcp_jwt("4242", AUD);
    // exp = now + 3600: fine until exp + 60 s.
    assert!(verifier_at(&pki, Duration::seconds(3659))
        .verify(&token)
        .await
        .is_ok());
    let err = verifier_at(&pki, Duration::seconds(3661))
        .verify(&token)
        .await
        .unwrap_err();
    assert!(matches!(err, GcpError::Expired { .. }), "{err}");
    // iat = now: fine from now - 60 s.
    assert!(verifier_at(&pki, Duration::seconds(-59))
        .verify(&token)
        .await
        .is_ok());
    let err = verifier_at(&pki, Duration::seconds(-61))
        .verify(&token)
        .await
        .unwrap_err();
    assert!(matches!(err, GcpError::NotYetValid { .. }), "{err}");
    let mut c = claims(&pki);
    c["nbf"] = json!(pki.now.timestamp() + 600);
    assert!(matches!(
        verify(&pki, sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &c)).await,
        Err(GcpError::NotYetValid { .. })
    ));
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let pki = TestPki::new();
    for header in [
        json!({"alg": "none", "kid": GCP_KID_1}),
        json!({"alg": "None", "kid": GCP_KID_1}),
        json!({"alg": "", "kid": GCP_KID_1}),
    ] {
        let token = format!("{}.", jwt_signing_input(&header, &claims(&pki)));
        assert!(
            matches!(
                verify(&pki, token).await,
                Err(GcpError::UnsupportedAlgorithm { .. })
            ),
            "{header}"
        );
    }
    // A valid RS256 signature does not make a non-RS256 header acceptable.
    let token = sign_jwt_with_header(
        &json!({"alg": "RS512", "kid": GCP_KID_1}),
        TestKey::Gcp1,
        &claims(&pki),
    );
    assert!(matches!(
        verify(&pki, token).await,
        Err(GcpError::UnsupportedAlgorithm { .. })
    ));
}

#[tokio::test]
async fn hs256_keyed_with_the_public_key_is_rejected() {
    let pki = TestPki::new();
    let header = json!({"alg": "HS256", "kid": GCP_KID_1, "typ": "JWT"});
    let (n, _) = TestKey::Gcp1.modulus_and_exponent();
    for secret in [
        TestKey::Gcp1.pkcs1_public_der(),
        n,
        TestPki::gcp_jwks_json().into_bytes(),
    ] {
        let token = sign_jwt_hs256(&header, &claims(&pki), &secret);
        assert!(matches!(
            verify(&pki, token).await,
            Err(GcpError::UnsupportedAlgorithm { .. })
        ));
    }
    // And with the header claiming RS256 but an HMAC in the signature slot.
    let token = sign_jwt_hs256(
        &json!({"alg": "RS256", "kid": GCP_KID_1}),
        &claims(&pki),
        &TestKey::Gcp1.pkcs1_public_der(),
    );
    assert!(matches!(
        verify(&pki, token).await,
        Err(GcpError::BadSignature { .. })
    ));
}

#[tokio::test]
async fn unknown_or_missing_kid_fails() {
    let pki = TestPki::new();
    let token = sign_jwt_rs256("not-a-key", TestKey::Gcp1, &claims(&pki));
    assert!(matches!(
        verify(&pki, token).await,
        Err(GcpError::UnknownKid { kid }) if kid == "not-a-key"
    ));
    let token = sign_jwt_with_header(&json!({"alg": "RS256"}), TestKey::Gcp1, &claims(&pki));
    assert!(matches!(
        verify(&pki, token).await,
        Err(GcpError::MissingKid)
    ));
}

#[tokio::test]
async fn wrong_key_and_tampering_fail() {
    let pki = TestPki::new();
    // Signed by key 2, claiming key 1.
    let token = sign_jwt_rs256(GCP_KID_1, TestKey::Gcp2, &claims(&pki));
    assert!(matches!(
        verify(&pki, token).await,
        Err(GcpError::BadSignature { .. })
    ));
    // Signed by a key not in the JWKS at all.
    let token = sign_jwt_rs256(GCP_KID_1, TestKey::Attacker, &claims(&pki));
    assert!(matches!(
        verify(&pki, token).await,
        Err(GcpError::BadSignature { .. })
    ));

    let good = pki.gcp_jwt("4242", AUD).json_web_token;
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload = b64.decode(parts[1]).unwrap();
    let pos = payload.windows(4).position(|w| w == b"4242").unwrap();
    payload[pos] = b'5';
    let forged = format!("{}.{}.{}", parts[0], b64.encode(&payload), parts[2]);
    assert!(matches!(
        verify(&pki, forged).await,
        Err(GcpError::BadSignature { .. })
    ));
    let mut sig = b64.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let forged = format!("{}.{}.{}", parts[0], parts[1], b64.encode(&sig));
    assert!(matches!(
        verify(&pki, forged).await,
        Err(GcpError::BadSignature { .. })
    ));
}

#[tokio::test]
async fn tokens_without_compute_engine_claims_fail() {
    let pki = TestPki::new();
    let mut c = claims(&pki);
    c.as_object_mut().unwrap().remove("google");
    assert!(matches!(
        verify(&pki, sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &c)).await,
        Err(GcpError::NotComputeEngine)
    ));
}

#[tokio::test]
async fn garbage_and_truncated_tokens_fail_cleanly() {
    let pki = TestPki::new();
    let good = pki.gcp_jwt("4242", AUD).json_web_token;
    for g in [
        "",
        " ",
        "a",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "..",
        "e30.e30.",
        "!!.!!.!!",
        "eyJhbGciOiJSUzI1NiJ9.e30.AA==",
    ] {
        assert!(verify(&pki, g.to_string()).await.is_err(), "{g:?}");
    }
    for len in 0..good.len() {
        assert!(
            verify(&pki, good[..len].to_string()).await.is_err(),
            "truncated at {len}"
        );
    }
    let huge = "a".repeat(100_000);
    assert!(matches!(
        verify(&pki, huge).await,
        Err(GcpError::Malformed { .. })
    ));
    let c = json!({"iss": 1, "aud": null});
    assert!(verify(&pki, sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &c))
        .await
        .is_err());
}

#[test]
fn jwks_without_usable_keys_is_an_error() {
    for bad in ["", "{}", "{\"keys\":[]}", "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"a\"}]}", "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"alg\":\"HS256\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}"] {
        assert!(JwkSet::from_json(bad.as_bytes()).is_err(), "{bad}");
    }
    let set = JwkSet::from_json(TestPki::gcp_jwks_json().as_bytes()).unwrap();
    assert_eq!(set.kids(), vec!["test-key-1", "test-key-2"]);
}

#[tokio::test]
async fn jwks_from_a_file() {
    let pki = TestPki::new();
    let dir = std::env::temp_dir().join(format!("instauth-gcp-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, TestPki::gcp_jwks_json()).unwrap();
    let v = GcpVerifier::from_config(
        path.to_str().unwrap(),
        AUD,
        Arc::new(FixedClock::new(pki.now)),
    )
    .unwrap();
    assert!(v.verify(&pki.gcp_jwt("4242", AUD)).await.is_ok());
    assert!(GcpVerifier::from_config(
        "/nonexistent/jwks.json",
        AUD,
        Arc::new(FixedClock::new(pki.now))
    )
    .is_err());
    std::fs::remove_dir_all(dir).unwrap();
}
