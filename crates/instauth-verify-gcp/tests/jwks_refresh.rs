//! JWKS over real HTTP on 127.0.0.1: caching by max-age, rate-limited refetch on unknown kid,
//! last good set kept when a refresh fails.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use chrono::Duration;
use instauth_testkit::{sign_jwt_rs256, JwksServer, TestKey, TestPki, GCP_KID_1, GCP_KID_2};
use instauth_types::GoogleInstanceIdentityRequest;
use instauth_verify::FixedClock;
use instauth_verify_gcp::{GcpError, GcpVerifier};

const AUD: &str = "coder";

fn token(pki: &TestPki, kid: &str, key: TestKey) -> GoogleInstanceIdentityRequest {
    GoogleInstanceIdentityRequest {
        json_web_token: sign_jwt_rs256(kid, key, &TestPki::gcp_claims("4242", AUD, pki.now)),
        agent_name: None,
    }
}

fn only_key_1() -> String {
    TestPki::gcp_jwks_json_with(&[(GCP_KID_1, TestKey::Gcp1)])
}

#[tokio::test]
async fn keys_are_cached_for_max_age() {
    let pki = TestPki::new();
    let server = JwksServer::start(TestPki::gcp_jwks_json(), Some(300)).await;
    let clock = Arc::new(FixedClock::new(pki.now));
    let v = GcpVerifier::from_config(server.url(), AUD, clock.clone()).unwrap();
    let t = token(&pki, GCP_KID_1, TestKey::Gcp1);
    v.verify(&t).await.unwrap();
    v.verify(&t).await.unwrap();
    assert_eq!(server.hits(), 1);
    clock.advance(Duration::seconds(299));
    v.verify(&t).await.unwrap();
    assert_eq!(server.hits(), 1);
    clock.advance(Duration::seconds(2));
    v.verify(&t).await.unwrap();
    assert_eq!(server.hits(), 2, "stale after max-age");
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_a_minute() {
    let pki = TestPki::new();
    let server = JwksServer::start(only_key_1(), Some(3600)).await;
    let clock = Arc::new(FixedClock::new(pki.now));
    let v = GcpVerifier::from_config(server.url(), AUD, clock.clone()).unwrap();
    v.verify(&token(&pki, GCP_KID_1, TestKey::Gcp1))
        .await
        .unwrap();
    assert_eq!(server.hits(), 1);

    // Google rotates in key 2.
    server.set_body(TestPki::gcp_jwks_json(), Some(3600));
    let t2 = token(&pki, GCP_KID_2, TestKey::Gcp2);
    // Within a minute of the last fetch: no refetch, the kid is unknown.
    assert!(matches!(
        v.verify(&t2).await,
        Err(GcpError::UnknownKid { .. })
    ));
    assert_eq!(server.hits(), 1);
    clock.advance(Duration::seconds(61));
    v.verify(&t2).await.unwrap();
    assert_eq!(server.hits(), 2);

    // A flood of made-up kids costs one request per minute.
    let bogus = token(&pki, "bogus", TestKey::Gcp1);
    for _ in 0..5 {
        assert!(matches!(
            v.verify(&bogus).await,
            Err(GcpError::UnknownKid { .. })
        ));
    }
    assert_eq!(server.hits(), 2);
    clock.advance(Duration::seconds(61));
    for _ in 0..5 {
        assert!(v.verify(&bogus).await.is_err());
    }
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn last_good_set_is_kept_when_refresh_fails() {
    let pki = TestPki::new();
    let server = JwksServer::start(TestPki::gcp_jwks_json(), Some(60)).await;
    let clock = Arc::new(FixedClock::new(pki.now));
    let v = GcpVerifier::from_config(server.url(), AUD, clock.clone()).unwrap();
    let t = token(&pki, GCP_KID_1, TestKey::Gcp1);
    v.verify(&t).await.unwrap();
    server.fail_with(500);
    clock.advance(Duration::seconds(120));
    v.verify(&t).await.unwrap();
    assert_eq!(server.hits(), 2, "the refresh was attempted");
    server.set_body("not json".into(), Some(60));
    clock.advance(Duration::seconds(120));
    v.verify(&t).await.unwrap();
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn no_keys_at_all_is_an_error_not_a_panic() {
    let pki = TestPki::new();
    let server = JwksServer::start(String::new(), None).await;
    server.fail_with(503);
    let clock = Arc::new(FixedClock::new(pki.now));
    let v = GcpVerifier::from_config(server.url(), AUD, clock.clone()).unwrap();
    let t = token(&pki, GCP_KID_1, TestKey::Gcp1);
    assert!(matches!(v.verify(&t).await, Err(GcpError::Jwks(_))));
    // Recovers once the endpoint does (after the retry interval).
    server.set_body(TestPki::gcp_jwks_json(), Some(300));
    assert!(v.verify(&t).await.is_err());
    clock.advance(Duration::seconds(61));
    v.verify(&t).await.unwrap();
}

#[tokio::test]
async fn prepare_then_finish_is_verify_in_two_halves() {
    let pki = TestPki::new();
    let server = JwksServer::start(String::new(), None).await;
    server.fail_with(503);
    let clock = Arc::new(FixedClock::new(pki.now));
    let v = GcpVerifier::from_config(server.url(), AUD, clock.clone()).unwrap();
    let t = token(&pki, GCP_KID_1, TestKey::Gcp1);

    // Keys unreachable and none cached: a temporary failure, found before any signature work.
    let err = v.prepare(t.clone()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    // A bad proof is not one.
    let bad = GoogleInstanceIdentityRequest {
        json_web_token: "x.y.z".into(),
        agent_name: None,
    };
    assert!(!v.prepare(bad).await.unwrap_err().is_unavailable());

    server.set_body(TestPki::gcp_jwks_json(), Some(300));
    clock.advance(Duration::seconds(61));
    // Surrounding white space is trimmed, as by `verify`.
    let mut padded = t.clone();
    padded.json_web_token = format!("  {}\n", t.json_web_token);
    let prepared = v.prepare(padded).await.unwrap();
    assert!(!format!("{prepared:?}").contains(&t.json_web_token[..20]));
    let id = v.finish(prepared).unwrap();
    assert_eq!(id.instance_id(), "4242");

    // A signature made with another key fails in `finish`, not in `prepare`.
    let forged = token(&pki, GCP_KID_1, TestKey::Gcp2);
    let prepared = v.prepare(forged).await.unwrap();
    let err = v.finish(prepared).unwrap_err();
    assert!(matches!(err, GcpError::BadSignature { .. }), "{err}");
    assert!(!err.is_unavailable());
}
