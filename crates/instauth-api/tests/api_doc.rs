//! docs/API.md's route table matches `ROUTES`, and the live router answers every route in it
//! (and nothing else) — so the document cannot drift from the code.
#![allow(clippy::unwrap_used)]

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use instauth_api::{ApiConfig, AppState, Verifiers, ROUTES};
use instauth_store::testing::TestDb;

#[test]
fn api_md_lists_exactly_the_routes() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md")).unwrap();
    let documented: Vec<(String, String)> = doc
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            match cells.as_slice() {
                ["", m @ ("GET" | "POST" | "DELETE"), p, ..] => {
                    Some((m.to_string(), p.to_string()))
                }
                _ => None,
            }
        })
        .collect();
    let code: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_serves_every_listed_route() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let clock: Arc<dyn instauth_verify::Clock> = Arc::new(instauth_verify::SystemClock);
    let jwks = instauth_verify_gcp::JwkSet::from_json(
        instauth_testkit::TestPki::gcp_jwks_json().as_bytes(),
    )
    .unwrap();
    let verifiers = Verifiers::new(
        instauth_verify_aws::AwsVerifier::new(instauth_verify_aws::AwsCertificates::builtin()),
        instauth_verify_azure::AzureVerifier::new(
            instauth_verify_azure::AzureTrust::builtin(),
            clock.clone(),
        ),
        instauth_verify_gcp::GcpVerifier::new(
            "coder",
            instauth_verify_gcp::JwksSource::Static(Arc::new(jwks)),
            clock,
        ),
    );
    let (state, _w) = AppState::new(
        store,
        verifiers,
        ApiConfig {
            session_ttl: Duration::from_secs(60),
            admin_token: "t".into(),
            exchange_rate_limit: 0,
            ..ApiConfig::default()
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, instauth_api::router(state)).into_future());
    let http = reqwest::Client::new();
    for (method, path) in ROUTES {
        let path = path
            .replace("{workspace}", "ws")
            .replace("{agent_id}", "00000000-0000-0000-0000-000000000000")
            .replace("{agent}", "main");
        let res = http
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        // An unrouted request gets the fallback's message; a routed one never does.
        assert_ne!(
            body["message"], "No such endpoint.",
            "{method} {path} is not routed"
        );
    }
    let res = http.get(format!("{url}/api/v2/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
}

/// The worked example of the agent key signature in docs/API.md, recomputed: a fixed seed, time
/// and proof give one public key, message, digest and signature (Ed25519 is deterministic), so
/// the document cannot drift from the code the server and the agent share.
#[test]
fn api_md_agent_key_example_is_exact() {
    use instauth_types::agent_key;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    let seed: Vec<u8> = (0u8..32).collect();
    let key = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    let token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJhdWQiOiJjb2RlciJ9.c2lnbmF0dXJl";
    let time = 1_767_225_600; // 2026-01-01T00:00:00Z
    let message = agent_key::message(instauth_types::Provider::Gcp, Some(" main "), time, token);
    let digest = message.rsplit('\n').next().unwrap().to_owned();
    let signature = key.sign(message.as_bytes());
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public_key().as_ref())
        .verify(message.as_bytes(), signature.as_ref())
        .unwrap();
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let expected = format!(
        "```text\n\
         Ed25519 seed (hex)   {hex}\n\
         agent_public_key     {}\n\
         fingerprint          {}\n\
         provider             gcp\n\
         agent_name           \" main \" (trimmed: main)\n\
         agent_key_time       {time}\n\
         json_web_token       {token}\n\
         SHA-256 (hex)        {digest}\n\
         agent_key_signature  {}\n\
         ```\n\
         \n\
         The message (five lines joined by LF, 0x0a, with no LF at the end; {} bytes):\n\
         \n\
         ```text\n\
         {message}\n\
         ```\n",
        agent_key::encode(key.public_key().as_ref()),
        agent_key::fingerprint(key.public_key().as_ref()),
        agent_key::encode(signature.as_ref()),
        message.len(),
    );
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md")).unwrap();
    assert!(
        doc.contains(&expected),
        "docs/API.md must contain the agent key example exactly as follows:\n{expected}"
    );
}
