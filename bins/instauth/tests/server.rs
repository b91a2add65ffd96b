//! `instauth server` and `instauth migrate` as a user runs them.
#![allow(clippy::unwrap_used)]

mod common;

use common::{instauth, Server};
use instauth_store::testing::TestDb;
use instauth_store::{validate_build, DatabaseConfig, Store, ValidBuild};
use instauth_types::{AgentAuth, AgentSpec, BuildRequest, ResourceSpec};

fn one_agent_build() -> ValidBuild {
    let build = BuildRequest {
        resources: vec![ResourceSpec {
            name: "vm".into(),
            resource_type: "aws_instance".into(),
            agents: vec![AgentSpec {
                name: "main".into(),
                auth: AgentAuth::AwsInstanceIdentity.into(),
                instance_id: Some("i-1".into()),
                parent: None,
                require_agent_key: false,
            }],
            expect: None,
        }],
    };
    validate_build("ws", build).expect("valid build")
}

async fn get(url: &str) -> reqwest::StatusCode {
    reqwest::get(url).await.expect("GET").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_sqlite_database_survives_a_restart() {
    let home = tempfile::tempdir().unwrap();
    let db_path = home.path().join(".local/share/instauth/instauth.db");

    let server = Server::start({
        let mut c = instauth(home.path());
        c.args(["server", "--listen", "127.0.0.1:0"]);
        c
    });
    assert_eq!(get(&format!("{}/healthz", server.url)).await, 200);
    assert_eq!(get(&format!("{}/readyz", server.url)).await, 200);
    assert!(db_path.exists(), "{} was not created", db_path.display());

    // Write through the store while the server runs (WAL allows it), then restart the server.
    let store = Store::open(DatabaseConfig::Sqlite {
        path: db_path.clone(),
    })
    .await
    .unwrap();
    store.create_build(&one_agent_build()).await.unwrap();
    drop(store);
    assert!(server.terminate().success(), "SIGTERM must exit 0");

    let server = Server::start({
        let mut c = instauth(home.path());
        c.args(["server", "--listen", "127.0.0.1:0"]);
        c
    });
    assert_eq!(get(&format!("{}/readyz", server.url)).await, 200);
    let store = Store::open(DatabaseConfig::Sqlite { path: db_path })
        .await
        .unwrap();
    let ws = store.get_workspace("ws").await.unwrap().expect("data kept");
    assert_eq!(ws.agents[0].name, "main");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdg_data_home_is_honoured() {
    let home = tempfile::tempdir().unwrap();
    let xdg = tempfile::tempdir().unwrap();
    let server = Server::start({
        let mut c = instauth(home.path());
        c.env("XDG_DATA_HOME", xdg.path())
            .args(["server", "--listen", "127.0.0.1:0"]);
        c
    });
    assert_eq!(get(&format!("{}/readyz", server.url)).await, 200);
    assert!(xdg.path().join("instauth/instauth.db").exists());
    assert!(!home.path().join(".local").exists());
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_url_and_readiness_follow_the_database() {
    let home = tempfile::tempdir().unwrap();
    let db = TestDb::postgres_unmigrated().await;
    let DatabaseConfig::Postgres { url } = db.config.clone() else {
        unreachable!()
    };
    let out = instauth(home.path())
        .args(["migrate", "--postgres-url", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied"));
    let out = instauth(home.path())
        .args(["migrate", "--postgres-url", &url])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{out:?}"
    );

    let server = Server::start({
        let mut c = instauth(home.path());
        c.env("INSTAUTH_POSTGRES_URL", &url)
            .args(["server", "--listen", "127.0.0.1:0"]);
        c
    });
    assert_eq!(get(&format!("{}/readyz", server.url)).await, 200);
    assert!(!home
        .path()
        .join(".local/share/instauth/instauth.db")
        .exists());

    // Take the database away: readiness must say so (503), liveness must not.
    drop(db);
    let res = reqwest::get(format!("{}/readyz", server.url))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Database unavailable.");
    assert_eq!(get(&format!("{}/healthz", server.url)).await, 200);
    // An exchange whose proof verifies but cannot reach the database: 503, not 500.
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/aws-exchange.json"
    ))
    .unwrap();
    let res = reqwest::Client::new()
        .post(format!(
            "{}/api/v2/workspaceagents/aws-instance-identity",
            server.url
        ))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
    assert!(server.terminate().success());
}

#[test]
fn unreachable_postgres_fails_with_context() {
    let home = tempfile::tempdir().unwrap();
    let out = instauth(home.path())
        .args([
            "migrate",
            "--postgres-url",
            "postgres://postgres@127.0.0.1:1/none",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("migrating postgres 127.0.0.1:1/none"), "{err}");
}
