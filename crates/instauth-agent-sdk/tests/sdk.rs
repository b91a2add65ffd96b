//! The SDK against fake metadata services and a fake exchange server, over loopback HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::FakeServer;
use instauth_agent_sdk::{
    header_command, Agent, AgentOptions, Backoff, Client, ClientOptions, Credentials, Error,
    GoogleIdentity, MetadataClient, MetadataEndpoints, MetadataError, Provider, Session,
};
use instauth_testkit::imds::{AwsImdsMode, FakeImds};
use instauth_testkit::TestPki;

fn endpoints(imds: &FakeImds) -> MetadataEndpoints {
    MetadataEndpoints {
        aws: imds.url().into(),
        azure: imds.url().into(),
        gce_host: imds.host().into(),
    }
}

fn metadata(imds: &FakeImds) -> MetadataClient {
    MetadataClient::new(endpoints(imds)).unwrap()
}

fn aws_session(server: &FakeServer, imds: &FakeImds, name: Option<&str>) -> Session {
    let client = Client::new(&server.url, ClientOptions::default()).unwrap();
    Session::new(
        client,
        Credentials::InstanceIdentity {
            provider: Provider::Aws,
            metadata: metadata(imds),
            google: GoogleIdentity::default(),
        },
        name,
    )
}

#[tokio::test]
async fn aws_imdsv2_reads_document_signature_and_rsa2048_with_a_token() {
    let pki = TestPki::new();
    let imds = FakeImds::aws(&pki, "i-0abc", "us-east-1", AwsImdsMode::Imdsv2Required).await;
    let proof = metadata(&imds).aws_identity().await.unwrap();
    let expected = pki.aws_proof("i-0abc", "us-east-1");
    assert_eq!(proof.document, expected.document);
    assert_eq!(proof.signature, expected.signature);
    assert_eq!(proof.pkcs7, expected.pkcs7);
    assert_eq!(proof.agent_name, None);
    assert_eq!(
        imds.requests(),
        [
            "PUT /latest/api/token",
            "GET /latest/dynamic/instance-identity/document token=yes",
            "GET /latest/dynamic/instance-identity/signature token=yes",
            "GET /latest/dynamic/instance-identity/rsa2048 token=yes",
        ]
    );
}

#[tokio::test]
async fn aws_falls_back_to_imdsv1_when_the_token_call_is_refused() {
    let pki = TestPki::new();
    for code in [403, 404, 405] {
        let imds =
            FakeImds::aws(&pki, "i-0abc", "eu-west-1", AwsImdsMode::TokenRefused(code)).await;
        let proof = metadata(&imds).aws_identity().await.unwrap();
        assert!(proof.document.contains("\"i-0abc\""));
        let reqs = imds.requests();
        assert_eq!(reqs[0], "PUT /latest/api/token");
        assert!(
            reqs[1..].iter().all(|r| r.ends_with("token=no")),
            "{code}: {reqs:?}"
        );
        assert_eq!(reqs.len(), 4);
    }
}

#[tokio::test]
async fn aws_falls_back_to_imdsv1_when_the_token_call_cannot_connect() {
    // Nothing listens on this port: the PUT is refused, and so is the GET that follows, whose
    // error must name the GET's endpoint (proving the fallback happened).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = MetadataClient::new(MetadataEndpoints {
        aws: url.clone(),
        ..MetadataEndpoints::default()
    })
    .unwrap();
    let err = client.aws_identity().await.unwrap_err();
    match &err {
        MetadataError::Request { endpoint, .. } => {
            assert_eq!(
                endpoint,
                &format!("{url}/latest/dynamic/instance-identity/document")
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn metadata_errors_name_the_endpoint_and_status() {
    let pki = TestPki::new();
    let imds = FakeImds::aws(&pki, "i-0abc", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    imds.fail_with(Some(500));
    let err = metadata(&imds).aws_identity().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("{}/latest/api/token", imds.url())),
        "{text}"
    );
    assert!(text.contains("HTTP 500"), "{text}");

    let azure = FakeImds::azure(&pki, "vm-1").await;
    azure.fail_with(Some(503));
    let text = metadata(&azure)
        .azure_identity()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("/metadata/attested/document?api-version=2020-09-01"),
        "{text}"
    );
    assert!(text.contains("HTTP 503"), "{text}");
}

#[tokio::test]
async fn azure_attested_document() {
    let pki = TestPki::new();
    let imds = FakeImds::azure(&pki, "2f0c0e4e-0000-4000-8000-000000000001").await;
    let proof = metadata(&imds).azure_identity().await.unwrap();
    assert_eq!(
        proof,
        pki.azure_proof("2f0c0e4e-0000-4000-8000-000000000001")
    );
    assert_eq!(imds.requests(), ["GET /metadata/attested/document"]);
}

#[tokio::test]
async fn gcp_identity_token_for_the_audience() {
    let imds = FakeImds::gcp("4242").await;
    let proof = metadata(&imds)
        .google_identity("default", "my-coder")
        .await
        .unwrap();
    let payload = proof.json_web_token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "my-coder");
    assert_eq!(claims["google"]["compute_engine"]["instance_id"], "4242");
    assert_eq!(
        imds.requests(),
        ["GET /computeMetadata/v1/instance/service-accounts/default/identity"]
    );
}

#[tokio::test]
async fn each_cloud_exchanges_at_its_endpoint_with_the_trimmed_name() {
    let pki = TestPki::new();
    let server = FakeServer::start().await;
    let aws = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    let azure = FakeImds::azure(&pki, "vm-1").await;
    let gcp = FakeImds::gcp("77").await;
    let cases = [
        (Provider::Aws, &aws, Some("  dev \t")),
        (Provider::Azure, &azure, Some("   ")),
        (Provider::Gcp, &gcp, None),
    ];
    for (provider, imds, name) in cases {
        let client = Client::new(&server.url, ClientOptions::default()).unwrap();
        let session = Session::new(
            client,
            Credentials::InstanceIdentity {
                provider,
                metadata: metadata(imds),
                google: GoogleIdentity::default(),
            },
            name,
        );
        let manifest = session.manifest().await.unwrap();
        assert_eq!(manifest.agent_name, "main");
    }
    let rec = server.recorded.lock().unwrap();
    let (p, body) = &rec.exchanges[0];
    assert_eq!(p, "aws");
    assert_eq!(body["agent_name"], "dev");
    assert!(body["pkcs7"].as_str().unwrap().len() > 100);
    assert!(body["document"].as_str().unwrap().contains("i-1"));
    let (p, body) = &rec.exchanges[1];
    assert_eq!(p, "azure");
    assert_eq!(body["encoding"], "pkcs7");
    assert!(
        body.get("agent_name").is_none(),
        "empty name must be omitted: {body}"
    );
    let (p, body) = &rec.exchanges[2];
    assert_eq!(p, "google");
    assert_eq!(
        body["json_web_token"].as_str().unwrap().split('.').count(),
        3
    );
    assert!(body.get("agent_name").is_none());
}

#[tokio::test]
async fn concurrent_401s_trigger_one_exchange() {
    let pki = TestPki::new();
    let server = FakeServer::start().await;
    server.config.lock().unwrap().exchange_delay = Duration::from_millis(100);
    let imds = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Required).await;
    let session = Arc::new(aws_session(&server, &imds, Some("main")));
    session.manifest().await.unwrap();
    assert_eq!(server.exchange_count(), 1);

    server.revoke_all();
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let s = session.clone();
            tokio::spawn(async move { s.manifest().await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(
        server.exchange_count(),
        2,
        "one re-exchange for 16 concurrent 401s"
    );
    assert_eq!(session.metrics().exchanges_ok(), 2);
}

#[tokio::test]
async fn a_401_re_exchanges_and_retries_once() {
    let pki = TestPki::new();
    let server = FakeServer::start().await;
    let imds = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    let session = aws_session(&server, &imds, None);
    session.manifest().await.unwrap();
    server.revoke_all();
    session
        .heartbeat(instauth_agent_sdk::LifecycleState::Ready)
        .await
        .unwrap();
    assert_eq!(server.exchange_count(), 2);
    let seen = server.recorded.lock().unwrap().tokens_seen.clone();
    assert_eq!(seen, ["session-1", "session-1", "session-2"]);
}

#[tokio::test]
async fn a_409_carries_the_candidate_names() {
    let pki = TestPki::new();
    let server = FakeServer::start().await;
    server.config.lock().unwrap().conflict = Some(vec!["main".into(), "dev".into()]);
    let imds = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    let session = aws_session(&server, &imds, None);
    let err = session.manifest().await.unwrap_err();
    match &err {
        Error::Conflict { agent_names, .. } => assert_eq!(agent_names, &["dev", "main"]),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("set CODER_AGENT_NAME to one of: dev, main"),
        "{err}"
    );
    assert_eq!(err.agent_names().unwrap(), ["dev", "main"]);
}

#[tokio::test]
async fn the_token_file_is_re_read_after_a_401() {
    let server = FakeServer::start().await;
    server.config.lock().unwrap().valid.insert("token-a".into());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent-token");
    std::fs::write(&path, "token-a\n").unwrap();
    let client = Client::new(&server.url, ClientOptions::default()).unwrap();
    let session = Session::new(client, Credentials::TokenFile(path.clone()), None);
    session.manifest().await.unwrap();

    // Rotated: the server now only knows token-b, and so does the file.
    server.config.lock().unwrap().valid = ["token-b".to_owned()].into();
    std::fs::write(&path, "token-b").unwrap();
    session.manifest().await.unwrap();
    let seen = server.recorded.lock().unwrap().tokens_seen.clone();
    assert_eq!(seen, ["token-a", "token-a", "token-b"]);
    assert_eq!(server.exchange_count(), 0);

    // Not rotated: the 401 is returned after one re-read.
    server.revoke_all();
    let err = session.manifest().await.unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
}

#[tokio::test]
async fn a_static_token_is_sent_and_a_401_is_returned() {
    let server = FakeServer::start().await;
    server.config.lock().unwrap().valid.insert("fixed".into());
    let client = Client::new(&server.url, ClientOptions::default()).unwrap();
    let session = Session::new(client, Credentials::Token("fixed".into()), None);
    session.manifest().await.unwrap();
    server.revoke_all();
    assert!(session.manifest().await.unwrap_err().is_unauthorized());
    assert_eq!(server.recorded.lock().unwrap().tokens_seen.len(), 2);
}

#[tokio::test]
async fn header_command_headers_go_on_every_request() {
    let pki = TestPki::new();
    let server = FakeServer::start().await;
    let imds = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    let headers = header_command("echo 'X-Test=from-command'; echo; echo 'X-Other = two'")
        .await
        .unwrap();
    assert_eq!(headers.len(), 2);
    let client = Client::new(
        &server.url,
        ClientOptions {
            headers,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let session = Session::new(
        client,
        Credentials::InstanceIdentity {
            provider: Provider::Aws,
            metadata: metadata(&imds),
            google: GoogleIdentity::default(),
        },
        None,
    );
    session.manifest().await.unwrap();
    let seen = server.recorded.lock().unwrap().x_test.clone();
    assert_eq!(seen.len(), 2, "exchange and manifest");
    assert!(seen.iter().all(|h| h.as_deref() == Some("from-command")));

    assert!(header_command("exit 3").await.is_err());
    assert!(header_command("echo not-a-header").await.is_err());
}

/// Polls `done` every 5 ms; fails the test if it does not hold within 10 s.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn fast_options() -> AgentOptions {
    AgentOptions {
        heartbeat_interval: Duration::from_millis(20),
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(40), 0.2),
        shutdown_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn the_agent_heartbeats_and_reports_shutdown() {
    let pki = TestPki::new();
    let server = FakeServer::start().await;
    let imds = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    let session = Arc::new(aws_session(&server, &imds, Some("main")));
    let agent = Agent::new(session.clone(), fast_options());
    let status = agent.status();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        agent
            .run(async {
                let _ = rx.await;
            })
            .await
    });
    // Wait for a few heartbeats, revoking the session midway to force a re-exchange.
    wait_until("3 heartbeats", || server.heartbeats().len() >= 3).await;
    assert!(status.lock().unwrap().connected);
    server.revoke_all();
    let before = server.heartbeats().len();
    wait_until("2 heartbeats after the revocation", || {
        server.heartbeats().len() >= before + 2
    })
    .await;
    tx.send(()).unwrap();
    run.await.unwrap();

    let beats = server.heartbeats();
    assert_eq!(beats[0], "starting");
    assert!(
        beats[1..beats.len() - 2].iter().all(|b| b == "ready"),
        "{beats:?}"
    );
    assert_eq!(&beats[beats.len() - 2..], ["shutting_down", "off"]);
    assert_eq!(server.exchange_count(), 2);
    assert!(!status.lock().unwrap().connected);
    assert!(session.metrics().heartbeats_ok() >= 5);
}

#[tokio::test]
async fn the_agent_retries_a_409_until_the_names_are_resolved() {
    let pki = TestPki::new();
    let server = FakeServer::start().await;
    server.config.lock().unwrap().conflict = Some(vec!["dev".into(), "main".into()]);
    let imds = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    let session = Arc::new(aws_session(&server, &imds, None));
    let agent = Agent::new(session, fast_options());
    let status = agent.status();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        agent
            .run(async {
                let _ = rx.await;
            })
            .await
    });
    wait_until("3 exchanges answered 409", || server.exchange_count() >= 3).await;
    let last_error = status.lock().unwrap().last_error.clone().unwrap();
    assert!(last_error.contains("dev, main"), "{last_error}");
    assert!(server.heartbeats().is_empty());
    server.config.lock().unwrap().conflict = None;
    wait_until("2 heartbeats once the names resolve", || {
        server.heartbeats().len() >= 2
    })
    .await;
    tx.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn exchange_errors_keep_the_server_message_detail_and_names() {
    let pki = TestPki::new();
    let server = FakeServer::start().await;
    let imds = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    let session = aws_session(&server, &imds, Some("web"));
    let set = |code, body: serde_json::Value, retry| {
        server.config.lock().unwrap().exchange_error = Some((code, body, retry));
    };

    set(
        404,
        serde_json::json!({"message": "No agent found with instance ID \"i-1\" and name \"web\".", "agent_names": ["main", "dev"]}),
        Some(3),
    );
    let err = session.manifest().await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(err.agent_names().unwrap(), ["dev", "main"]);
    // 404 and 409 carry the server's Retry-After (SPEC §2), which the agent honours.
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    set(
        409,
        serde_json::json!({"message": "Multiple agents found.", "agent_names": ["main", "dev"]}),
        Some(5),
    );
    let err = session.manifest().await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(40), 0.2);
    assert_eq!(
        backoff.next_delay(err.retry_after()),
        Duration::from_secs(5)
    );

    set(
        401,
        serde_json::json!({"message": "Invalid AWS identity.", "detail": "unsupported region \"xx-1\""}),
        None,
    );
    let err = session.manifest().await.unwrap_err();
    assert!(err.is_unauthorized());
    let text = err.to_string();
    assert!(
        text.contains("Invalid AWS identity.") && text.contains("unsupported region"),
        "{text}"
    );
    assert!(
        text.contains("/api/v2/workspaceagents/aws-instance-identity"),
        "{text}"
    );

    set(
        429,
        serde_json::json!({"message": "Rate limit exceeded."}),
        Some(7),
    );
    let err = session.manifest().await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.to_string().contains("HTTP 429"), "{err}");

    // The agent never waits less than Retry-After.
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(40), 0.2);
    assert_eq!(
        backoff.next_delay(err.retry_after()),
        Duration::from_secs(7)
    );
}

#[tokio::test]
async fn a_session_with_a_key_signs_every_exchange() {
    use instauth_types::agent_key;

    let pki = TestPki::new();
    let server = FakeServer::start().await;
    let imds = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    let (key, _) = instauth_agent_sdk::AgentKey::generate().unwrap();
    let public = agent_key::encode(key.public_key());
    let session = aws_session(&server, &imds, Some(" main ")).with_agent_key(key);
    session.manifest().await.unwrap();
    let body = server.recorded.lock().unwrap().exchanges[0].1.clone();
    assert_eq!(body["agent_public_key"], public.as_str());
    let time = body["agent_key_time"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - time).abs() <= 5, "{time} vs {now}");
    // What the server checks: the shared message over the PKCS#7 and the trimmed name.
    let message = agent_key::message(
        Provider::Aws,
        Some("main"),
        time,
        body["pkcs7"].as_str().unwrap(),
    );
    let signature = agent_key::decode(body["agent_key_signature"].as_str().unwrap()).unwrap();
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ED25519,
        agent_key::decode(&public).unwrap(),
    )
    .verify(message.as_bytes(), &signature)
    .unwrap();

    // A key refusal is told apart from other 401s.
    server.config.lock().unwrap().exchange_error = Some((
        401,
        serde_json::json!({"message": "Invalid agent key.", "detail": "agent \"main\" is bound to the agent key abc, not to def"}),
        None,
    ));
    let err = aws_session(&server, &imds, Some("main"))
        .manifest()
        .await
        .unwrap_err();
    assert!(err.is_agent_key_refusal(), "{err:?}");
    assert!(
        err.to_string().contains("bound to the agent key abc"),
        "{err}"
    );
    server.config.lock().unwrap().exchange_error = Some((
        401,
        serde_json::json!({"message": "Invalid AWS identity."}),
        None,
    ));
    let err = aws_session(&server, &imds, None)
        .manifest()
        .await
        .unwrap_err();
    assert!(err.is_unauthorized() && !err.is_agent_key_refusal());
}

#[tokio::test]
async fn a_session_without_a_key_sends_no_key_fields() {
    let pki = TestPki::new();
    let server = FakeServer::start().await;
    let imds = FakeImds::aws(&pki, "i-1", "us-east-1", AwsImdsMode::Imdsv2Optional).await;
    aws_session(&server, &imds, None).manifest().await.unwrap();
    let body = server.recorded.lock().unwrap().exchanges[0].1.clone();
    for field in ["agent_public_key", "agent_key_time", "agent_key_signature"] {
        assert!(body.get(field).is_none(), "{field} in {body}");
    }
}
