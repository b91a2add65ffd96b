//! The admin client against the real router over loopback HTTP (SQLite): every call, the error
//! bodies it renders, and path segments that must stay one segment.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use instauth_api::{ApiConfig, AppState, Verifiers};
use instauth_client::{terraform, Client, ClientError};
use instauth_store::testing::TestDb;

const ADMIN: &str = "client-test-admin-token";

struct Server {
    url: String,
    state: AppState,
    _db: TestDb,
}

async fn start() -> Server {
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
    let (state, _writer) = AppState::new(
        store,
        verifiers,
        ApiConfig {
            session_ttl: Duration::from_secs(60),
            admin_token: ADMIN.into(),
            exchange_rate_limit: 0,
            ..ApiConfig::default()
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = instauth_api::router(state.clone());
    tokio::spawn(instauth_api::serve::serve(
        listener,
        app,
        instauth_api::serve::ServeConfig::default(),
        std::future::pending(),
    ));
    Server {
        url,
        state,
        _db: db,
    }
}

fn seed_build() -> instauth_types::BuildRequest {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/aws-multi-agent.json"
    );
    terraform::build_request(&std::fs::read(path).unwrap()).unwrap()
}

/// An exchange the server rejects before any verification: one audit record.
async fn bad_exchange(url: &str) {
    let res = reqwest::Client::new()
        .post(format!(
            "{url}{}",
            instauth_types::routes::AWS_INSTANCE_IDENTITY
        ))
        .json(&serde_json::json!({"agent_name": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_call_over_http() {
    let srv = start().await;
    let c = Client::new(&format!("{}/", srv.url), ADMIN).unwrap();

    let created = c.apply_build("alice", &seed_build()).await.unwrap();
    assert_eq!(created.workspace, "alice");
    assert_eq!(created.build_number, 1);
    let names: Vec<&str> = created.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["dev", "main"]);
    assert!(created.agents.iter().all(|a| a.token.is_none()));

    let w = c.workspace("alice").await.unwrap();
    assert_eq!(w.build_number, 1);
    assert_eq!(w.agents.len(), 2);
    assert!(w.agents.iter().all(|a| a.resource_name == "dev"
        && a.instance_id.as_deref() == Some("i-076e9b91f7c420782")
        && a.status == instauth_types::ConnectionStatus::Connecting));
    let list = c.list_workspaces().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "alice");

    // The audit log and its cursor.
    bad_exchange(&srv.url).await;
    srv.state.flush_audit().await;
    let first = c.audit(Some(10)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].outcome, "bad_request");
    assert_eq!(first[0].agent_name, "main");
    assert!(c.audit_after(first[0].id, None).await.unwrap().is_empty());
    bad_exchange(&srv.url).await;
    srv.state.flush_audit().await;
    let next = c.audit_after(first[0].id, Some(5)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].id > first[0].id);

    let unknown = uuid::Uuid::new_v4();
    let err = c.revoke_sessions(unknown).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    let agent = w.agents[0].id;
    c.revoke_sessions(agent).await.unwrap();

    c.delete_workspace("alice").await.unwrap();
    let err = c.workspace("alice").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "404 Not Found: Workspace \"alice\" not found."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_servers_body() {
    let srv = start().await;
    let c = Client::new(&srv.url, ADMIN).unwrap();

    // A name with a slash stays one segment: the workspace is unknown, the route is not.
    let err = c.workspace("a/b?c").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "404 Not Found: Workspace \"a/b?c\" not found."
    );
    let err = c.apply_build("A b/c", &seed_build()).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(
        err.to_string(),
        "400 Bad Request: Validation failed.\n  workspace: must match [a-z0-9][a-z0-9-]{0,63}"
    );
    let err = c.delete_workspace("..").await.unwrap_err();
    assert!(matches!(err, ClientError::Name { .. }), "{err:?}");

    let wrong = Client::new(&srv.url, "not-the-token").unwrap();
    let err = wrong.list_workspaces().await.unwrap_err();
    assert_eq!(err.to_string(), "401 Unauthorized: Admin token is invalid.");

    // Nothing listens on port 1 of loopback.
    let away = Client::new("http://127.0.0.1:1", ADMIN).unwrap();
    let err = away.list_workspaces().await.unwrap_err();
    assert!(matches!(err, ClientError::Request { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot reach http://127.0.0.1:1/api/v2/workspaces"
    );
}
