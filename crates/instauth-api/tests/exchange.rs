//! The server end to end over real HTTP on loopback, on SQLite and on PostgreSQL, with proofs
//! signed by the test PKI: every scenario of SPEC.md §2's policy, the agent API, the admin API,
//! audit, metrics and the database round trips per exchange.
#![allow(clippy::unwrap_used)]

mod common;

use common::{pki, REGION};
use std::sync::Arc;
use std::time::Duration;

use instauth_api::{ApiConfig, AppState};
use instauth_store::testing::{TestBackend, TestDb};
use instauth_store::Store;
use instauth_testkit::TestPki;
use instauth_types::{AwsInstanceIdentityRequest, GoogleInstanceIdentityRequest};
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token";
const AUDIENCE: &str = "https://instauth.test";
/// Exchanges per second per client: high enough for every test but one.
const RATE: u32 = 1000;

struct Srv {
    url: String,
    http: reqwest::Client,
    pki: Arc<TestPki>,
    state: AppState,
    /// The database, owned by the first replica started on it.
    _db: Option<TestDb>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(backend: TestBackend, session_ttl: Duration) -> Srv {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    start_on(store, Some(db), session_ttl).await
}

/// A server (a replica) on `store`'s database.
async fn start_on(store: Store, db: Option<TestDb>, session_ttl: Duration) -> Srv {
    let pki = pki();
    let (state, _writer) = AppState::new(
        store,
        common::verifiers(&pki, &[REGION], AUDIENCE),
        ApiConfig {
            session_ttl,
            admin_token: ADMIN.into(),
            exchange_rate_limit: RATE,
            ..ApiConfig::default()
        },
    )
    .await
    .unwrap();
    let app = instauth_api::router(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(instauth_api::serve::serve(
        listener,
        app,
        instauth_api::serve::ServeConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    Srv {
        url,
        http: reqwest::Client::new(),
        pki,
        state,
        _db: db,
        _stop: stop,
    }
}

impl Srv {
    fn store(&self) -> &Store {
        self.state.store()
    }

    /// A second server process on the same database: its own store (pool, liveness cache,
    /// heartbeat writer) and its own HTTP listener, as another replica would have.
    async fn replica(&self) -> Srv {
        let store = Store::open(self.store().config().clone()).await.unwrap();
        start_on(store, None, Duration::from_secs(3600)).await
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a build of `ws` with AWS agents `(name, instance, parent)` on one resource.
    async fn build(&self, ws: &str, agents: &[(&str, &str, Option<&str>)]) -> Value {
        let agents: Vec<Value> = agents
            .iter()
            .map(|(name, iid, parent)| {
                json!({"name": name, "auth": "aws-instance-identity", "instance_id": iid, "parent": parent})
            })
            .collect();
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/api/v2/workspaces/{ws}/builds"),
                Some(json!({"resources": [{"name": "vm", "type": "aws_instance", "agents": agents}]})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    fn aws_proof(&self, iid: &str, name: Option<&str>) -> AwsInstanceIdentityRequest {
        let mut p = self.pki.aws_proof(iid, REGION);
        p.agent_name = name.map(Into::into);
        p
    }

    async fn post(&self, path: &str, body: &impl serde::Serialize) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn aws(&self, iid: &str, name: Option<&str>) -> (u16, Value) {
        self.post(
            "/api/v2/workspaceagents/aws-instance-identity",
            &self.aws_proof(iid, name),
        )
        .await
    }

    async fn token(&self, iid: &str, name: Option<&str>) -> String {
        let (status, body) = self.aws(iid, name).await;
        assert_eq!(status, 200, "{body}");
        body["session_token"].as_str().unwrap().to_owned()
    }

    async fn manifest(&self, token: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}/api/v2/workspaceagents/me/manifest", self.url))
            .header("Coder-Session-Token", token)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn heartbeat(&self, token: &str, state: &str) -> u16 {
        self.http
            .post(format!("{}/api/v2/workspaceagents/me/heartbeat", self.url))
            .header("Coder-Session-Token", token)
            .json(&json!({ "lifecycle_state": state }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

macro_rules! server_test {
    ($name:ident, |$srv:ident| $body:expr) => {
        server_test!($name, Duration::from_secs(3600), |$srv| $body);
    };
    ($name:ident, $ttl:expr, |$srv:ident| $body:expr) => {
        mod $name {
            use super::*;
            async fn run($srv: Srv) {
                $body.await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(start(TestBackend::Sqlite, $ttl).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(start(TestBackend::Postgres, $ttl).await).await
            }
        }
    };
}

async fn sequentially<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in fs {
        out.push(f.await);
    }
    out
}

fn names(v: &Value) -> Vec<String> {
    serde_json::from_value(v["agent_names"].clone()).unwrap()
}

server_test!(one_agent_without_a_name_is_selected, |srv| async move {
    srv.build("ws", &[("main", "i-1", None)]).await;
    let token = srv.token("i-1", None).await;
    let (status, m) = srv.manifest(&token).await;
    assert_eq!(status, 200);
    assert_eq!(m["agent_name"], "main");
    assert_eq!(m["workspace_name"], "ws");
    assert_eq!(m["build_number"], 1);
    assert_eq!(m["resource_type"], "aws_instance");
    // The signature-only format (no pkcs7) works too.
    let mut p = srv.pki.aws_signature_proof("i-1", REGION);
    p.agent_name = None;
    let (status, _) = srv
        .post("/api/v2/workspaceagents/aws-instance-identity", &p)
        .await;
    assert_eq!(status, 200);
});

server_test!(two_agents_need_a_name, |srv| async move {
    srv.build("ws", &[("main", "i-1", None), ("dev", "i-1", None)])
        .await;
    let (status, body) = srv.aws("i-1", None).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["message"],
        "Multiple agents found with instance ID \"i-1\". Set CODER_AGENT_NAME to one of: dev, main"
    );
    assert_eq!(names(&body), ["dev", "main"]);
    let (status, body) = srv.aws("i-1", Some("   ")).await;
    assert_eq!(status, 409, "white space only means no name: {body}");

    let main = srv.token("i-1", Some(" main ")).await;
    let dev = srv.token("i-1", Some("dev")).await;
    assert_ne!(main, dev);
    assert_eq!(srv.manifest(&main).await.1["agent_name"], "main");
    assert_eq!(srv.manifest(&dev).await.1["agent_name"], "dev");

    let (status, body) = srv.aws("i-1", Some("ghost")).await;
    assert_eq!(status, 404);
    assert_eq!(
        body["message"],
        "No agent found with instance ID \"i-1\" and name \"ghost\"."
    );
    assert_eq!(names(&body), ["dev", "main"]);
    let (status, body) = srv.aws("i-404", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["message"], "Instance with id \"i-404\" not found.");
    assert_eq!(names(&body), Vec::<String>::new());
});

server_test!(same_instance_in_two_workspaces, |srv| async move {
    srv.build("alpha", &[("main", "i-1", None)]).await;
    srv.build("beta", &[("dev", "i-1", None)]).await;
    let (status, body) = srv.aws("i-1", None).await;
    assert_eq!(status, 409);
    assert_eq!(names(&body), ["dev", "main"]);
    let token = srv.token("i-1", Some("dev")).await;
    assert_eq!(srv.manifest(&token).await.1["workspace_name"], "beta");
});

server_test!(
    sub_agents_never_authenticate_by_instance,
    |srv| async move {
        srv.build(
            "ws",
            &[("main", "i-1", None), ("child", "i-1", Some("main"))],
        )
        .await;
        let token = srv.token("i-1", None).await;
        assert_eq!(srv.manifest(&token).await.1["agent_name"], "main");
        let (status, body) = srv.aws("i-1", Some("child")).await;
        assert_eq!(status, 404);
        assert_eq!(names(&body), ["main"]);
    }
);

server_test!(a_rebuild_retires_the_old_agents, |srv| async move {
    srv.build("ws", &[("old", "i-1", None)]).await;
    let old_token = srv.token("i-1", None).await;
    assert_eq!(srv.manifest(&old_token).await.0, 200);
    srv.build("ws", &[("new", "i-1", None)]).await;
    assert_eq!(
        srv.manifest(&old_token).await.0,
        401,
        "old build's session ends"
    );
    let (status, _) = srv.aws("i-1", Some("old")).await;
    assert_eq!(status, 404, "old build's agent cannot exchange");
    let new_token = srv.token("i-1", None).await;
    let (_, m) = srv.manifest(&new_token).await;
    assert_eq!(
        (m["agent_name"].as_str(), m["build_number"].as_i64()),
        (Some("new"), Some(2))
    );
});

server_test!(deleting_a_workspace_ends_its_sessions, |srv| async move {
    srv.build("ws", &[("main", "i-1", None)]).await;
    let token = srv.token("i-1", None).await;
    let (status, _) = srv
        .admin(reqwest::Method::DELETE, "/api/v2/workspaces/ws", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(srv.manifest(&token).await.0, 401);
    assert_eq!(srv.heartbeat(&token, "ready").await, 401);
    assert_eq!(srv.aws("i-1", None).await.0, 404);
    let (status, body) = srv
        .admin(reqwest::Method::DELETE, "/api/v2/workspaces/ws", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["message"], "Workspace \"ws\" not found.");
});

server_test!(expired_sessions_get_401, Duration::ZERO, |srv| async move {
    srv.build("ws", &[("main", "i-1", None)]).await;
    let token = srv.token("i-1", None).await;
    let (status, body) = srv.manifest(&token).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "Session token is invalid or expired.");
});

server_test!(
    revoked_sessions_get_401_and_the_agent_exchanges_again,
    |srv| async move {
        let created = srv.build("ws", &[("main", "i-1", None)]).await;
        let id = created["agents"][0]["id"].as_str().unwrap().to_owned();
        let token = srv.token("i-1", None).await;
        let (status, _) = srv
            .admin(
                reqwest::Method::DELETE,
                &format!("/api/v2/workspaceagents/{id}/sessions"),
                None,
            )
            .await;
        assert_eq!(status, 204);
        assert_eq!(srv.manifest(&token).await.0, 401);
        let again = srv.token("i-1", None).await;
        assert_eq!(srv.manifest(&again).await.0, 200);
    }
);

server_test!(heartbeats_drive_agent_status, |srv| async move {
    srv.build("ws", &[("main", "i-1", None), ("dev", "i-1", None)])
        .await;
    let token = srv.token("i-1", Some("main")).await;
    assert_eq!(srv.heartbeat(&token, "starting").await, 204);
    assert_eq!(srv.heartbeat(&token, "ready").await, 204);
    assert_eq!(srv.heartbeat(&token, "bogus").await, 400);
    assert_eq!(srv.heartbeat("not-a-token", "ready").await, 401);
    let (status, ws) = srv
        .admin(reqwest::Method::GET, "/api/v2/workspaces/ws", None)
        .await;
    assert_eq!(status, 200);
    let by_name = |n: &str| {
        ws["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("main")["status"], "connected");
    assert_eq!(by_name("main")["lifecycle_state"], "ready");
    assert!(by_name("main")["first_connected_at"].is_string());
    assert_eq!(by_name("dev")["status"], "connecting");
    assert_eq!(ws["resources"][0]["type"], "aws_instance");
    let (_, list) = srv
        .admin(reqwest::Method::GET, "/api/v2/workspaces", None)
        .await;
    assert_eq!(list[0]["name"], "ws");
    assert_eq!(list[0]["agents"].as_array().unwrap().len(), 2);
});

server_test!(bad_requests_get_stable_4xx_bodies, |srv| async move {
    srv.build("ws", &[("main", "i-1", None)]).await;
    let url = format!("{}/api/v2/workspaceagents/aws-instance-identity", srv.url);
    let res = srv.http.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Request body must be valid JSON.");

    let (status, body) = srv
        .post("/api/v2/workspaceagents/aws-instance-identity", &json!({}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "Validation failed.");
    let fields: Vec<&str> = body["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["document", "signature"]);

    // Well-formed JSON with a field of the wrong type names the field, not the value.
    let mut p = serde_json::to_value(srv.aws_proof("i-1", None)).unwrap();
    p["agent_key_time"] = json!("1700000000");
    let (status, body) = srv
        .post("/api/v2/workspaceagents/aws-instance-identity", &p)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "Validation failed.");
    assert_eq!(body["validations"][0]["field"], "agent_key_time");
    assert_eq!(
        body["validations"][0]["detail"],
        "must be an integer (Unix seconds)"
    );

    let mut p = srv.aws_proof("i-1", None);
    p.pkcs7 = Some("***".into());
    let (status, body) = srv
        .post("/api/v2/workspaceagents/aws-instance-identity", &p)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["validations"][0]["field"], "pkcs7");

    let p = srv.aws_proof("i-1", Some(&"x".repeat(65)));
    let (status, body) = srv
        .post("/api/v2/workspaceagents/aws-instance-identity", &p)
        .await;
    assert_eq!(
        (status, body["validations"][0]["field"].as_str()),
        (400, Some("agent_name"))
    );

    let huge = json!({"document": "a".repeat(70 * 1024), "signature": "AAAA"});
    let (status, _) = srv
        .post("/api/v2/workspaceagents/aws-instance-identity", &huge)
        .await;
    assert_eq!(status, 413);

    let (status, body) = srv
        .post(
            "/api/v2/workspaceagents/azure-instance-identity",
            &json!({"signature": "AAAA", "encoding": "der"}),
        )
        .await;
    assert_eq!(
        (status, body["validations"][0]["field"].as_str()),
        (400, Some("encoding"))
    );
    let (status, _) = srv
        .post(
            "/api/v2/workspaceagents/google-instance-identity",
            &json!({"json_web_token": " "}),
        )
        .await;
    assert_eq!(status, 400);
    // Nothing stored was lost.
    assert!(srv.token("i-1", None).await.len() > 20);
});

server_test!(
    forged_proofs_get_401_with_the_failed_check,
    |srv| async move {
        srv.build("ws", &[("main", "i-1", None)]).await;
        // The document claims another instance than the PKCS#7 that signs it.
        let mut p = srv.aws_proof("i-1", None);
        p.document = p.document.replace("i-1", "i-2");
        let (status, body) = srv
            .post("/api/v2/workspaceagents/aws-instance-identity", &p)
            .await;
        assert_eq!(status, 401);
        assert_eq!(body["message"], "Invalid AWS identity.");
        assert!(body["detail"].as_str().unwrap().len() > 5);
        // A region nobody trusts.
        let p = srv.pki.aws_proof("i-1", "eu-nowhere-9");
        let (status, body) = srv
            .post("/api/v2/workspaceagents/aws-instance-identity", &p)
            .await;
        assert_eq!(status, 401);
        assert!(
            body["detail"].as_str().unwrap().contains("eu-nowhere-9"),
            "{body}"
        );
        // A JWT for another audience.
        let jwt = srv.pki.gcp_jwt("1234", "someone-else");
        let (status, body) = srv
            .post("/api/v2/workspaceagents/google-instance-identity", &jwt)
            .await;
        assert_eq!(
            (status, body["message"].as_str()),
            (401, Some("Invalid GCP identity."))
        );
        // Garbage that decodes as base64 but is no PKCS#7.
        let (status, body) = srv
            .post(
                "/api/v2/workspaceagents/azure-instance-identity",
                &json!({"signature": "AAAA", "encoding": "pkcs7"}),
            )
            .await;
        assert_eq!(
            (status, body["message"].as_str()),
            (401, Some("Invalid Azure identity."))
        );
    }
);

server_test!(azure_and_google_exchanges, |srv| async move {
    let (status, body) = srv
        .admin(
            reqwest::Method::POST,
            "/api/v2/workspaces/multi/builds",
            Some(json!({"resources": [
                {"name": "az", "type": "azurerm_linux_virtual_machine", "agents": [
                    {"name": "main", "auth": "azure-instance-identity", "instance_id": "vm-1"}]},
                {"name": "gce", "type": "google_compute_instance", "agents": [
                    {"name": "main2", "auth": "google-instance-identity", "instance_id": "1234"}]},
            ]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = srv
        .post(
            "/api/v2/workspaceagents/azure-instance-identity",
            &srv.pki.azure_proof("vm-1"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["session_token"].as_str().unwrap();
    assert_eq!(srv.manifest(token).await.1["resource_name"], "az");
    let jwt: GoogleInstanceIdentityRequest = srv.pki.gcp_jwt("1234", AUDIENCE);
    let (status, body) = srv
        .post("/api/v2/workspaceagents/google-instance-identity", &jwt)
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["session_token"].as_str().unwrap();
    assert_eq!(srv.manifest(token).await.1["agent_name"], "main2");
    // An AWS proof for a GCP agent's instance ID finds nothing.
    assert_eq!(srv.aws("1234", None).await.0, 404);
});

server_test!(database_round_trips_per_exchange, |srv| async move {
    srv.build(
        "ws",
        &[
            ("main", "i-1", None),
            ("dev", "i-1", None),
            ("solo", "i-2", None),
        ],
    )
    .await;
    let store = srv.store().clone();
    srv.aws("i-2", None).await; // warm the pool and statement caches
    srv.state.flush_audit().await;
    // The audit writer runs in the background; count with it idle.
    macro_rules! count {
        ($f:expr) => {{
            let before = store.queries_total();
            let (status, _) = $f.await;
            let n = store.queries_total() - before;
            srv.state.flush_audit().await;
            (status, n)
        }};
    }
    let ok = count!(srv.aws("i-2", None));
    let conflict = count!(srv.aws("i-1", None));
    let not_found = count!(srv.aws("i-1", Some("ghost")));
    let mut forged = srv.aws_proof("i-2", None);
    forged.document = forged.document.replace("i-2", "i-3");
    let rejected = count!(srv.post("/api/v2/workspaceagents/aws-instance-identity", &forged));
    assert_eq!(ok, (200, 1), "a successful exchange is one statement");
    assert_eq!(conflict, (409, 1));
    assert_eq!(not_found, (404, 1));
    assert_eq!(
        rejected,
        (401, 0),
        "a rejected proof never reaches the database"
    );

    // Audit records are written by the background writer on its own pool, in batches.
    let before = srv.state.audit_queries_total();
    let tasks: Vec<_> = (0..40).map(|_| srv.aws("i-2", None)).collect();
    for (status, _) in sequentially(tasks).await {
        assert_eq!(status, 200);
    }
    srv.state.flush_audit().await;
    let audit_statements = srv.state.audit_queries_total() - before;
    // How many of these records share a statement depends on timing, so this bounds only the
    // cost per record; `audit_records_are_written_in_batches` checks the batching exactly.
    assert!(
        audit_statements <= 40,
        "{audit_statements} statements for 40 records"
    );
    let (_, audit) = srv
        .admin(reqwest::Method::GET, "/api/v2/audit?limit=1000", None)
        .await;
    assert_eq!(audit.as_array().unwrap().len(), 45);
});

/// Records that are queued while the writer cannot run are written `BATCH` to a statement. On a
/// current-thread runtime the writer task runs only when the test awaits, so all `n` records
/// are queued before it takes the first: `n = 2 * BATCH + 1` is exactly three statements, where
/// one statement per record would be `n`.
async fn audit_batches(backend: TestBackend) {
    use instauth_api::audit::{self, BATCH};
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let (sink, writer) = audit::start(store.clone(), || {});
    let record = |i: usize| instauth_store::NewAuditRecord {
        time: instauth_store::now(),
        provider: instauth_types::Provider::Aws,
        instance_id: format!("i-{i}"),
        agent_name: String::new(),
        outcome: "ok".into(),
        agent_id: None,
        remote_addr: "127.0.0.1:1".into(),
        reason: None,
        count: 1,
        uid: uuid::Uuid::new_v4(),
    };
    // A first write, so that connecting is not counted below.
    assert!(sink.record(record(0)));
    sink.flush().await;
    let before = store.queries_total();
    let n = 2 * BATCH + 1;
    for i in 1..=n {
        assert!(sink.record(record(i)), "the queue holds {n} records");
    }
    sink.flush().await;
    let statements = store.queries_total() - before;
    assert_eq!(statements, 3, "{n} records");
    assert!(statements < n as u64 / 2, "batches of {BATCH} hardly batch");
    assert_eq!(store.list_audit(10_000).await.unwrap().len(), n + 1);
    writer.shutdown().await;
}

mod audit_records_are_written_in_batches {
    use super::*;
    #[tokio::test(flavor = "current_thread")]
    async fn sqlite() {
        audit_batches(TestBackend::Sqlite).await
    }
    #[tokio::test(flavor = "current_thread")]
    async fn postgres() {
        audit_batches(TestBackend::Postgres).await
    }
}

server_test!(every_attempt_is_audited_without_secrets, |srv| async move {
    srv.build("ws", &[("main", "i-1", None), ("dev", "i-1", None)])
        .await;
    let token = srv.token("i-1", Some("main")).await;
    srv.aws("i-1", None).await;
    srv.post("/api/v2/workspaceagents/aws-instance-identity", &json!({}))
        .await;
    srv.state.flush_audit().await;
    let (status, audit) = srv
        .admin(reqwest::Method::GET, "/api/v2/audit?limit=10", None)
        .await;
    assert_eq!(status, 200);
    let rows = audit.as_array().unwrap();
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["bad_request", "conflict", "ok"]);
    assert_eq!(rows[2]["agent_name"], "main");
    assert_eq!(rows[2]["instance_id"], "i-1");
    assert_eq!(rows[2]["provider"], "aws");
    assert!(rows[2]["agent_id"].is_string());
    assert!(rows[2]["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let text = audit.to_string();
    assert!(!text.contains(&token));
    assert!(
        !text.contains("signature") && !text.contains("MII"),
        "no proofs in audit"
    );
    let (status, _) = srv
        .admin(reqwest::Method::GET, "/api/v2/audit?limit=0", None)
        .await;
    assert_eq!(status, 400);
});

server_test!(audit_after_is_a_cursor_oldest_first, |srv| async move {
    srv.build("ws", &[("main", "i-1", None), ("dev", "i-1", None)])
        .await;
    srv.aws("i-1", None).await;
    srv.aws("i-1", Some("main")).await;
    srv.aws("i-2", None).await;
    srv.state.flush_audit().await;
    let (_, all) = srv.admin(reqwest::Method::GET, "/api/v2/audit", None).await;
    let ids: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let oldest = ids[2];

    // After the oldest: the two newer ones, oldest first; `limit` still applies.
    let (status, page) = srv
        .admin(
            reqwest::Method::GET,
            &format!("/api/v2/audit?after={oldest}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let outcomes: Vec<(i64, &str)> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_i64().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, [(ids[1], "ok"), (ids[0], "not_found")]);
    let (_, page) = srv
        .admin(
            reqwest::Method::GET,
            &format!("/api/v2/audit?after={oldest}&limit=1"),
            None,
        )
        .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["id"], ids[1]);
    let (_, page) = srv
        .admin(
            reqwest::Method::GET,
            &format!("/api/v2/audit?after={}", ids[0]),
            None,
        )
        .await;
    assert_eq!(page, json!([]));

    // Bad parameters are named, each of them.
    let (status, body) = srv
        .admin(reqwest::Method::GET, "/api/v2/audit?after=-1&limit=x", None)
        .await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = body["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["limit", "after"]);
});

server_test!(
    admin_api_requires_the_token_and_validates_builds,
    |srv| async move {
        let res = srv
            .http
            .get(format!("{}/api/v2/workspaces", srv.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let res = srv
            .http
            .get(format!("{}/api/v2/workspaces", srv.url))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let (status, body) = srv
            .admin(
                reqwest::Method::POST,
                "/api/v2/workspaces/ws/builds",
                Some(json!({"resources": [{"name": "vm", "type": "t", "agents": [
                    {"name": "a", "auth": "aws-instance-identity"},
                    {"name": "a", "auth": "token"},
                    {"name": "b", "auth": "token", "parent": "ghost"},
                    {"name": "bad name", "auth": "token"}
                ]}]})),
            )
            .await;
        assert_eq!(status, 400);
        let fields: Vec<&str> = body["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["field"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "resources[0].agents[0].instance_id",
                "resources[0].agents[1].name",
                "resources[0].agents[2].parent",
                "resources[0].agents[3].name"
            ]
        );
        // Token agents get their token once, and it works on the agent API.
        let (status, body) = srv
        .admin(
            reqwest::Method::POST,
            "/api/v2/workspaces/ws/builds",
            Some(json!({"resources": [{"name": "vm", "type": "t", "agents": [{"name": "tok", "auth": "token"}]}]})),
        )
        .await;
        assert_eq!(status, 201);
        let token = body["agents"][0]["token"].as_str().unwrap();
        assert_eq!(srv.manifest(token).await.1["agent_name"], "tok");
        assert_eq!(
            srv.admin(reqwest::Method::GET, "/api/v2/workspaces/nope", None)
                .await
                .0,
            404
        );
    }
);

server_test!(metrics_count_exchanges, |srv| async move {
    srv.build("ws", &[("main", "i-1", None)]).await;
    srv.token("i-1", None).await;
    srv.aws("i-9", None).await;
    let text = srv
        .http
        .get(format!("{}/metrics", srv.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("instauth_exchanges_total{provider=\"aws\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.contains("instauth_exchanges_total{provider=\"aws\",outcome=\"not_found\"} 1"));
    assert!(text.contains("instauth_exchange_duration_seconds_count{provider=\"aws\"} 2"));
    assert!(text.contains("instauth_db_queries_total "));
    let res = srv
        .http
        .get(format!("{}/nope", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
});

server_test!(
    metrics_count_heartbeats_and_trust_expiry,
    |srv| async move {
        srv.build("ws", &[("main", "i-1", None)]).await;
        let token = srv.token("i-1", None).await;
        assert_eq!(srv.heartbeat(&token, "ready").await, 204);
        assert_eq!(srv.heartbeat(&token, "bogus").await, 400);
        srv.state.metrics().set_trust_certificate_expiry(
            instauth_types::Provider::Aws,
            "CN=test",
            1_900_000_000,
        );
        let res = srv
            .http
            .get(format!("{}/metrics", srv.url))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = res.text().await.unwrap();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("instauth_heartbeats_total 1"), "{text}");
        assert!(has("instauth_audit_records_dropped_total 0"), "{text}");
        assert!(
        has("instauth_trust_certificate_expiry_timestamp_seconds{provider=\"aws\",subject=\"CN=test\"} 1900000000"),
        "{text}"
    );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_gets_429() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let (state, _w) = AppState::new(
        store,
        common::verifiers(&pki(), &[REGION], AUDIENCE),
        ApiConfig {
            session_ttl: Duration::from_secs(60),
            admin_token: ADMIN.into(),
            exchange_rate_limit: 1,
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
    // A new connection (a new source port) for every request: the limiter and its audit
    // aggregate are per client IP, not per connection.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let post = || {
        http.post(format!(
            "{url}/api/v2/workspaceagents/aws-instance-identity"
        ))
        .json(&json!({}))
        .send()
    };
    assert_eq!(post().await.unwrap().status(), 400);
    assert_eq!(post().await.unwrap().status(), 400);
    let res = post().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Rate limit exceeded.");
    // A client that keeps knocking is recorded once per minute, with how many times it did.
    for _ in 0..5 {
        assert_eq!(post().await.unwrap().status(), 429);
    }
    state.flush_audit().await;
    let audit = state.store().list_audit(100).await.unwrap();
    let limited: Vec<_> = audit
        .iter()
        .filter(|r| r.record.outcome == "rate_limited")
        .collect();
    assert!(
        !limited.is_empty() && limited.len() <= 2,
        "one record per minute (two if the minute turned): {limited:?}"
    );
    assert!(
        limited.iter().all(|r| r.record.remote_addr == "127.0.0.1"),
        "the aggregate names the client's IP: {limited:?}"
    );
    let total: i32 = limited.iter().map(|r| r.record.count).sum();
    assert_eq!(total, 6, "every refused attempt is counted");
    assert_eq!(audit.len(), 2 + limited.len());
}

/// Records past `--audit-retention` are deleted by the server itself, starting at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_past_the_retention_are_deleted() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let record = |age: chrono::Duration, id: &str| instauth_store::NewAuditRecord {
        time: instauth_store::now() - age,
        provider: instauth_types::Provider::Aws,
        instance_id: id.into(),
        agent_name: String::new(),
        outcome: "ok".into(),
        agent_id: None,
        remote_addr: String::new(),
        reason: None,
        count: 1,
        uid: uuid::Uuid::new_v4(),
    };
    store
        .insert_audit(&[
            record(chrono::Duration::days(3), "old"),
            record(chrono::Duration::hours(1), "new"),
        ])
        .await
        .unwrap();
    let (state, _w) = AppState::new(
        store,
        common::verifiers(&pki(), &[REGION], AUDIENCE),
        ApiConfig {
            audit_retention: Duration::from_secs(24 * 3600),
            ..ApiConfig::default()
        },
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<String> = state
            .store()
            .list_audit(10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.record.instance_id)
            .collect();
        if ids == ["new"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {ids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Srv {
    /// Heartbeats until this replica answers them from its liveness cache (its watch of the
    /// database is running and the agent's entry is cached), then proves one more is a hit.
    async fn warm(&self, token: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert_eq!(self.heartbeat(token, "ready").await, 204);
            let before = self.store().liveness_stats();
            if before.active {
                assert_eq!(self.heartbeat(token, "ready").await, 204);
                if self.store().liveness_stats().hits > before.hits {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the liveness cache never answered: {before:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Heartbeats until one is refused; fails unless that happens within a second.
    async fn refused_within_a_second(&self, token: &str, what: &str) {
        let start = std::time::Instant::now();
        while self.heartbeat(token, "ready").await != 401 {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{what}: the second replica still accepts the session after 1 s"
            );
        }
    }
}

server_test!(
    revocations_reach_a_second_replica_within_a_second,
    |srv| async move {
        let other = srv.replica().await;
        let created = srv.build("ws", &[("main", "i-1", None)]).await;
        let id = created["agents"][0]["id"].as_str().unwrap().to_owned();

        // Sessions revoked on one replica: 401 there at once, on the other within 1 s.
        let token = srv.token("i-1", None).await;
        srv.warm(&token).await;
        other.warm(&token).await;
        let path = format!("/api/v2/workspaceagents/{id}/sessions");
        assert_eq!(srv.admin(reqwest::Method::DELETE, &path, None).await.0, 204);
        assert_eq!(srv.heartbeat(&token, "ready").await, 401);
        other.refused_within_a_second(&token, "revoked").await;

        // A new build made on the other replica.
        let token = srv.token("i-1", None).await;
        srv.warm(&token).await;
        other.warm(&token).await;
        let created = other.build("ws", &[("main", "i-1", None)]).await;
        assert_eq!(other.heartbeat(&token, "ready").await, 401);
        srv.refused_within_a_second(&token, "new build").await;

        // An agent key reset.
        let token = srv.token("i-1", None).await;
        srv.warm(&token).await;
        other.warm(&token).await;
        let (status, body) = srv
            .admin(
                reqwest::Method::DELETE,
                "/api/v2/workspaces/ws/agents/main/key",
                None,
            )
            .await;
        assert!(status == 204 || status == 200, "{status} {body}");
        assert_eq!(srv.heartbeat(&token, "ready").await, 401);
        other.refused_within_a_second(&token, "key reset").await;

        // The workspace deleted.
        let token = srv.token("i-1", None).await;
        srv.warm(&token).await;
        other.warm(&token).await;
        let (status, _) = other
            .admin(reqwest::Method::DELETE, "/api/v2/workspaces/ws", None)
            .await;
        assert_eq!(status, 204);
        assert_eq!(other.heartbeat(&token, "ready").await, 401);
        srv.refused_within_a_second(&token, "workspace deleted")
            .await;
        let _ = created;
    }
);

server_test!(
    a_heartbeat_is_recorded_when_it_is_answered,
    |srv| async move {
        let other = srv.replica().await;
        srv.build("ws", &[("main", "i-1", None)]).await;
        let token = srv.token("i-1", None).await;
        async fn lifecycle(srv: &Srv) -> Value {
            let (_, ws) = srv
                .admin(reqwest::Method::GET, "/api/v2/workspaces/ws", None)
                .await;
            ws["agents"][0]["lifecycle_state"].clone()
        }
        for (on, state) in [
            (&srv, "starting"),
            (&other, "ready"),
            (&srv, "shutting_down"),
            (&other, "off"),
        ] {
            assert_eq!(on.heartbeat(&token, state).await, 204);
            // Right after the 204, on either replica: the batch carrying it has committed.
            assert_eq!(lifecycle(&srv).await, state);
            assert_eq!(lifecycle(&other).await, state);
        }
    }
);
