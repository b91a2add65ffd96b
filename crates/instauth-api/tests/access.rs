//! Who may exchange, over real HTTP on loopback, on SQLite and on PostgreSQL: the server's
//! allow-lists and resources' `expect` (403), and agent keys (SPEC §2.1: binding on first use,
//! enforcement, requirement, reset, replay), with the statements each exchange costs.
#![allow(clippy::unwrap_used)]

mod common;

use common::{pki, REGION};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use instauth_api::{AllowLists, ApiConfig, AppState};
use instauth_store::testing::{TestBackend, TestDb};
use instauth_testkit::{sign_jwt_rs256, TestKey, TestPki, GCP_KID_1};
use instauth_types::agent_key::{self, fingerprint};
use instauth_types::{
    AgentKeyFields, AwsInstanceIdentityRequest, AzureInstanceIdentityRequest, ExchangeBody,
    ExchangeRequest, GoogleInstanceIdentityRequest,
};
use instauth_verify::FixedClock;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token";
const AUDIENCE: &str = "https://instauth.test";
const OTHER_REGION: &str = "eu-test-2";
const ACCOUNT: &str = "111111111111";
const OTHER_ACCOUNT: &str = "222222222222";
const AWS_PATH: &str = "/api/v2/workspaceagents/aws-instance-identity";
const AZURE_PATH: &str = "/api/v2/workspaceagents/azure-instance-identity";
const GCP_PATH: &str = "/api/v2/workspaceagents/google-instance-identity";

/// What a test server is started with.
#[derive(Default)]
struct Options {
    allow_lists: AllowLists,
    require_agent_keys: bool,
}

struct Srv {
    url: String,
    http: reqwest::Client,
    pki: Arc<TestPki>,
    state: AppState,
    /// The server's clock for `agent_key_time` (the verifiers keep the system clock).
    clock: Arc<FixedClock>,
    _db: TestDb,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(backend: TestBackend, options: Options) -> Srv {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let pki = pki();
    let clock = Arc::new(FixedClock::new(Utc::now()));
    let (state, _writer) = AppState::new(
        store,
        common::verifiers(&pki, &[REGION, OTHER_REGION], AUDIENCE),
        ApiConfig {
            session_ttl: Duration::from_secs(3600),
            admin_token: ADMIN.into(),
            exchange_rate_limit: 0,
            allow_lists: options.allow_lists,
            require_agent_keys: options.require_agent_keys,
            clock: clock.clone(),
            ..ApiConfig::default()
        },
    )
    .await
    .unwrap();
    let app = instauth_api::router(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Srv {
        url,
        http: reqwest::Client::new(),
        pki,
        state,
        clock,
        _db: db,
        _stop: stop,
    }
}

macro_rules! access_test {
    ($name:ident, $options:expr, |$srv:ident| $body:expr) => {
        mod $name {
            use super::*;
            async fn run($srv: Srv) {
                $body.await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(start(TestBackend::Sqlite, $options).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(start(TestBackend::Postgres, $options).await).await
            }
        }
    };
}

/// A deterministic Ed25519 key.
fn key(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
}

fn fp(k: &Ed25519KeyPair) -> String {
    fingerprint(k.public_key().as_ref())
}

/// The agent key fields for `body` signed by `k` at `time`, as an agent computes them.
fn key_fields<R: ExchangeBody>(body: &R, k: &Ed25519KeyPair, time: i64) -> AgentKeyFields {
    let message = agent_key::message(
        R::PROVIDER,
        body.agent_name(),
        time,
        body.agent_key_proof_field(),
    );
    AgentKeyFields {
        agent_public_key: Some(agent_key::encode(k.public_key().as_ref())),
        agent_key_time: Some(time),
        agent_key_signature: Some(agent_key::encode(k.sign(message.as_bytes()).as_ref())),
    }
}

fn unsigned<R>(body: R) -> ExchangeRequest<R> {
    ExchangeRequest {
        body,
        agent_key: AgentKeyFields::default(),
    }
}

fn named_aws(mut p: AwsInstanceIdentityRequest, name: Option<&str>) -> AwsInstanceIdentityRequest {
    p.agent_name = name.map(Into::into);
    p
}

impl Srv {
    fn now(&self) -> i64 {
        instauth_verify::Clock::now(&*self.clock).timestamp()
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

    async fn build(&self, ws: &str, resources: Value) -> Value {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/api/v2/workspaces/{ws}/builds"),
                Some(json!({ "resources": resources })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    async fn workspace(&self, ws: &str) -> Value {
        let (status, body) = self
            .admin(
                reqwest::Method::GET,
                &format!("/api/v2/workspaces/{ws}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn agent(&self, ws: &str, name: &str) -> Value {
        let w = self.workspace(ws).await;
        w["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()
            .clone()
    }

    async fn reset(&self, ws: &str, agent: &str) -> (u16, Value) {
        self.admin(
            reqwest::Method::DELETE,
            &format!("/api/v2/workspaces/{ws}/agents/{agent}/key"),
            None,
        )
        .await
    }

    async fn post(&self, path: &str, body: &impl Serialize) -> (u16, Value) {
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

    /// A proof of AWS instance `iid` in `region` of `account` (PKCS#7 and signature formats).
    fn aws_proof(&self, iid: &str, region: &str, account: &str) -> AwsInstanceIdentityRequest {
        let document = TestPki::aws_document(iid, region, account);
        AwsInstanceIdentityRequest {
            signature: TestPki::aws_signature(document.as_bytes(), TestKey::AwsRegion1024),
            pkcs7: Some(instauth_testkit::base64_wrapped(
                &self
                    .pki
                    .aws_pkcs7(document.as_bytes(), TestKey::AwsRegion2048),
            )),
            document,
            agent_name: None,
        }
    }

    /// An Azure proof for `vm` in `subscription`, at `location` (none: the document omits it).
    fn azure_proof(
        &self,
        vm: &str,
        subscription: &str,
        location: Option<&str>,
    ) -> AzureInstanceIdentityRequest {
        let fmt = "%m/%d/%y %H:%M:%S -0000";
        let created = self.pki.now - chrono::Duration::minutes(1);
        let mut doc = json!({
            "nonce": "20240101-000000",
            "subscriptionId": subscription,
            "timeStamp": {
                "createdOn": created.format(fmt).to_string(),
                "expiresOn": (created + chrono::Duration::hours(6)).format(fmt).to_string(),
            },
            "vmId": vm,
        });
        if let Some(l) = location {
            doc["location"] = json!(l);
        }
        let der = self.pki.azure_pkcs7_like_azure(doc.to_string().as_bytes());
        TestPki::azure_request(&der)
    }

    fn gcp_proof(&self, iid: &str, project: &str, zone: &str) -> GoogleInstanceIdentityRequest {
        let mut claims = TestPki::gcp_claims(iid, AUDIENCE, self.pki.now);
        claims["google"]["compute_engine"]["project_id"] = json!(project);
        claims["google"]["compute_engine"]["zone"] = json!(zone);
        GoogleInstanceIdentityRequest {
            json_web_token: sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &claims),
            agent_name: None,
        }
    }

    /// AWS instance `iid` of [`ACCOUNT`] in [`REGION`] asking for `name`, signed by `k` now.
    fn aws_signed(
        &self,
        iid: &str,
        name: Option<&str>,
        k: Option<&Ed25519KeyPair>,
    ) -> ExchangeRequest<AwsInstanceIdentityRequest> {
        let body = named_aws(self.aws_proof(iid, REGION, ACCOUNT), name);
        let agent_key = k
            .map(|k| key_fields(&body, k, self.now()))
            .unwrap_or_default();
        ExchangeRequest { body, agent_key }
    }

    async fn aws(&self, iid: &str, name: Option<&str>, k: Option<&Ed25519KeyPair>) -> (u16, Value) {
        self.post(AWS_PATH, &self.aws_signed(iid, name, k)).await
    }

    async fn manifest(&self, token: &str) -> u16 {
        self.http
            .get(format!("{}/api/v2/workspaceagents/me/manifest", self.url))
            .header("Coder-Session-Token", token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The newest audit record.
    async fn last_audit(&self) -> Value {
        self.state.flush_audit().await;
        let (_, audit) = self
            .admin(reqwest::Method::GET, "/api/v2/audit?limit=1", None)
            .await;
        audit[0].clone()
    }
}

fn allow_lists() -> AllowLists {
    AllowLists {
        aws_accounts: vec![ACCOUNT.into(), OTHER_ACCOUNT.into()],
        azure_subscriptions: vec!["sub-1".into()],
        gcp_projects: vec!["proj-a".into()],
    }
}

/// One resource per cloud, one agent each; the AWS one may carry an `expect`.
fn three_clouds(aws_expect: Option<Value>) -> Value {
    let mut aws = json!({"name": "vm", "type": "aws_instance", "agents": [
        {"name": "main", "auth": "aws-instance-identity", "instance_id": "i-1"}]});
    if let Some(e) = aws_expect {
        aws["expect"] = e;
    }
    json!([
        aws,
        {"name": "az", "type": "azurerm_linux_virtual_machine", "agents": [
            {"name": "azure", "auth": "azure-instance-identity", "instance_id": "vm-1"}]},
        {"name": "gce", "type": "google_compute_instance", "agents": [
            {"name": "gcp", "auth": "google-instance-identity", "instance_id": "42"}]},
    ])
}

fn assert_forbidden(got: (u16, Value), detail: &str) {
    assert_eq!(got.0, 403, "{}", got.1);
    assert_eq!(got.1["message"], "Identity not allowed.");
    assert_eq!(got.1["detail"], detail);
}

access_test!(
    allow_lists_per_provider,
    Options {
        allow_lists: allow_lists(),
        ..Options::default()
    },
    |srv| async move {
        srv.build("ws", three_clouds(Some(json!({"account_id": ACCOUNT}))))
            .await;
        let store = srv.store_queries();
        // AWS: both listed accounts pass the allow-list; an unlisted one is refused before
        // the database is asked anything.
        let p = unsigned(srv.aws_proof("i-1", REGION, ACCOUNT));
        assert_eq!(srv.post(AWS_PATH, &p).await.0, 200);
        let p = unsigned(srv.aws_proof("i-1", REGION, "999999999999"));
        let before = store();
        let got = srv.post(AWS_PATH, &p).await;
        assert_eq!(store() - before, 0, "a refused identity costs no statement");
        let detail = r#"account_id: expected one of "111111111111", "222222222222" (server allow-list --aws-accounts), got "999999999999""#;
        assert_forbidden(got, detail);
        let audit = srv.last_audit().await;
        assert_eq!(audit["outcome"], "forbidden");
        assert_eq!(audit["reason"], detail);
        assert_eq!(audit["instance_id"], "i-1");
        assert_eq!(
            audit["agent_id"],
            Value::Null,
            "refused before any agent was chosen"
        );
        // An allowed account, but the resource expects the other one: the audit names the
        // agent the proof was refused for.
        let p = unsigned(srv.aws_proof("i-1", REGION, OTHER_ACCOUNT));
        assert_forbidden(
            srv.post(AWS_PATH, &p).await,
            r#"account_id: expected "111111111111" (expect of resource "vm"), got "222222222222""#,
        );
        assert_eq!(
            srv.last_audit().await["agent_id"],
            srv.agent("ws", "main").await["id"]
        );
        // Azure.
        let p = unsigned(srv.azure_proof("vm-1", "sub-1", Some("westeurope")));
        assert_eq!(srv.post(AZURE_PATH, &p).await.0, 200);
        let p = unsigned(srv.azure_proof("vm-1", "sub-2", Some("westeurope")));
        assert_forbidden(
            srv.post(AZURE_PATH, &p).await,
            r#"subscription_id: expected "sub-1" (server allow-list --azure-subscriptions), got "sub-2""#,
        );
        // GCP.
        let p = unsigned(srv.gcp_proof("42", "proj-a", "us-central1-a"));
        assert_eq!(srv.post(GCP_PATH, &p).await.0, 200);
        let p = unsigned(srv.gcp_proof("42", "proj-b", "us-central1-a"));
        assert_forbidden(
            srv.post(GCP_PATH, &p).await,
            r#"project_id: expected "proj-a" (server allow-list --gcp-projects), got "proj-b""#,
        );
    }
);

access_test!(
    resource_expectations_per_provider,
    Options::default(),
    |srv| async move {
        srv.build(
            "ws",
            json!([
                {"name": "vm", "type": "aws_instance",
                 "expect": {"account_id": ACCOUNT, "region": REGION},
                 "agents": [{"name": "main", "auth": "aws-instance-identity", "instance_id": "i-1"}]},
                {"name": "az", "type": "azurerm_linux_virtual_machine",
                 "expect": {"subscription_id": "sub-1", "location": "westeurope"},
                 "agents": [{"name": "azure", "auth": "azure-instance-identity", "instance_id": "vm-1"}]},
                {"name": "gce", "type": "google_compute_instance",
                 "expect": {"project_id": "proj-a", "zone": "us-central1-a"},
                 "agents": [{"name": "gcp", "auth": "google-instance-identity", "instance_id": "42"}]},
                {"name": "free", "type": "aws_instance",
                 "agents": [{"name": "free", "auth": "aws-instance-identity", "instance_id": "i-2"}]},
            ]),
        )
        .await;
        // Shown back by GET, as declared.
        let ws = srv.workspace("ws").await;
        let expect_of = |name: &str| {
            ws["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .unwrap()["expect"]
                .clone()
        };
        assert_eq!(
            expect_of("vm"),
            json!({"account_id": ACCOUNT, "region": REGION})
        );
        assert_eq!(
            expect_of("gce"),
            json!({"project_id": "proj-a", "zone": "us-central1-a"})
        );
        assert_eq!(expect_of("free"), Value::Null);

        // AWS: match, other account, other region; a resource without `expect` takes any.
        let aws = |region, account| unsigned(srv.aws_proof("i-1", region, account));
        assert_eq!(srv.post(AWS_PATH, &aws(REGION, ACCOUNT)).await.0, 200);
        assert_forbidden(
            srv.post(AWS_PATH, &aws(REGION, OTHER_ACCOUNT)).await,
            r#"account_id: expected "111111111111" (expect of resource "vm"), got "222222222222""#,
        );
        assert_forbidden(
            srv.post(AWS_PATH, &aws(OTHER_REGION, ACCOUNT)).await,
            r#"region: expected "us-test-1" (expect of resource "vm"), got "eu-test-2""#,
        );
        let free = unsigned(srv.aws_proof("i-2", OTHER_REGION, "999999999999"));
        assert_eq!(srv.post(AWS_PATH, &free).await.0, 200);

        // Azure: match, other location, no location at all (a missing claim fails).
        let az = |sub, loc| unsigned(srv.azure_proof("vm-1", sub, loc));
        assert_eq!(
            srv.post(AZURE_PATH, &az("sub-1", Some("westeurope")))
                .await
                .0,
            200
        );
        assert_forbidden(
            srv.post(AZURE_PATH, &az("sub-1", Some("eastus"))).await,
            r#"location: expected "westeurope" (expect of resource "az"), got "eastus""#,
        );
        assert_forbidden(
            srv.post(AZURE_PATH, &az("sub-1", None)).await,
            r#"location: expected "westeurope" (expect of resource "az"), got nothing (the proof carries no such claim)"#,
        );
        assert_forbidden(
            srv.post(AZURE_PATH, &az("sub-9", Some("westeurope"))).await,
            r#"subscription_id: expected "sub-1" (expect of resource "az"), got "sub-9""#,
        );

        // GCP: match, other zone, other project.
        let gcp = |project, zone| unsigned(srv.gcp_proof("42", project, zone));
        assert_eq!(
            srv.post(GCP_PATH, &gcp("proj-a", "us-central1-a")).await.0,
            200
        );
        assert_forbidden(
            srv.post(GCP_PATH, &gcp("proj-a", "europe-west1-b")).await,
            r#"zone: expected "us-central1-a" (expect of resource "gce"), got "europe-west1-b""#,
        );
        assert_forbidden(
            srv.post(GCP_PATH, &gcp("proj-b", "us-central1-a")).await,
            r#"project_id: expected "proj-a" (expect of resource "gce"), got "proj-b""#,
        );
        let audit = srv.last_audit().await;
        assert_eq!(audit["outcome"], "forbidden");
        assert!(audit["reason"]
            .as_str()
            .unwrap()
            .starts_with("project_id: "));
    }
);

access_test!(
    malformed_fields_get_field_level_400s,
    Options::default(),
    |srv| async move {
        // A build: unknown expect key, a value that is no string, a key requirement on a token agent.
        let (status, body) = srv
        .admin(
            reqwest::Method::POST,
            "/api/v2/workspaces/ws/builds",
            Some(json!({"resources": [
                {"name": "vm", "type": "aws_instance", "expect": {"acount_id": "1", "region": 5},
                 "agents": [{"name": "main", "auth": "aws-instance-identity", "instance_id": "i-1"}]},
                {"name": "box", "type": "docker_container",
                 "agents": [{"name": "tok", "auth": "token", "require_agent_key": true}]},
            ]})),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let problems: Vec<(String, String)> = body["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["field"].as_str().unwrap().into(),
                    v["detail"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            problems,
            [
                (
                    "resources[0].expect.acount_id".to_owned(),
                    "unknown key for aws agents: expected account_id or region".to_owned()
                ),
                (
                    "resources[0].expect.region".to_owned(),
                    "must be a string of 1 to 128 bytes without surrounding white space".to_owned()
                ),
                (
                    "resources[1].agents[0].require_agent_key".to_owned(),
                    "only for root agents with instance identity auth".to_owned()
                ),
            ]
        );

        // Exchanges: key fields malformed, incomplete, or not canonical base64url.
        srv.build("ws", three_clouds(None)).await;
        let good = srv.aws_signed("i-1", None, Some(&key(1)));
        let field_errors = |body: Value| -> Vec<String> {
            body["validations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["field"].as_str().unwrap().to_owned())
                .collect()
        };
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            (
                "padded key",
                json!({"agent_public_key": format!("{}=", good.agent_key.agent_public_key.clone().unwrap())}),
                vec!["agent_public_key"],
            ),
            (
                "short key",
                json!({"agent_public_key": agent_key::encode(&[7; 31])}),
                vec!["agent_public_key"],
            ),
            (
                "standard alphabet",
                json!({"agent_public_key": "+".repeat(43)}),
                vec!["agent_public_key"],
            ),
            (
                "long signature",
                json!({"agent_key_signature": agent_key::encode(&[7; 65])}),
                vec!["agent_key_signature"],
            ),
            (
                "no time",
                json!({"agent_key_time": null}),
                vec!["agent_key_time"],
            ),
            (
                "key alone",
                json!({"agent_key_time": null, "agent_key_signature": null}),
                vec!["agent_key_time", "agent_key_signature"],
            ),
        ];
        for (what, patch, fields) in cases {
            let mut body = serde_json::to_value(&good).unwrap();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    body.as_object_mut().unwrap().remove(k);
                } else {
                    body[k] = v.clone();
                }
            }
            let (status, resp) = srv.post(AWS_PATH, &body).await;
            assert_eq!(status, 400, "{what}: {resp}");
            assert_eq!(resp["message"], "Validation failed.", "{what}");
            assert_eq!(field_errors(resp), fields, "{what}");
        }
        let mut body = serde_json::to_value(&good).unwrap();
        body["agent_key_time"] = json!("now");
        assert_eq!(
            srv.post(AWS_PATH, &body).await.0,
            400,
            "a time that is no integer"
        );
        assert_eq!(
            srv.post(AWS_PATH, &good).await.0,
            200,
            "the well-formed one binds"
        );
    }
);

access_test!(
    agent_keys_bind_on_first_use,
    Options::default(),
    |srv| async move {
        let aws_agents = |main_extra: Value| {
            let mut main =
                json!({"name": "main", "auth": "aws-instance-identity", "instance_id": "i-1"});
            for (k, v) in main_extra.as_object().unwrap() {
                main[k] = v.clone();
            }
            json!([{"name": "vm", "type": "aws_instance", "agents": [
                main,
                {"name": "dev", "auth": "aws-instance-identity", "instance_id": "i-1"},
            ]}])
        };
        srv.build("ws", aws_agents(json!({}))).await;
        let (a, b) = (key(1), key(2));
        let main = srv.agent("ws", "main").await;
        assert_eq!(main["agent_key"], Value::Null);
        assert_eq!(main["require_agent_key"], false);

        // Unbound, no key, no requirement: served as before (Coder agents).
        assert_eq!(srv.aws("i-1", Some("dev"), None).await.0, 200);
        // The first signed exchange binds; the same key keeps working.
        let (status, body) = srv.aws("i-1", Some("main"), Some(&a)).await;
        assert_eq!(status, 200, "{body}");
        let old_token = body["session_token"].as_str().unwrap().to_owned();
        let bound = srv.agent("ws", "main").await["agent_key"].clone();
        assert_eq!(bound["fingerprint"], fp(&a));
        assert_eq!(
            bound["public_key"],
            agent_key::encode(a.public_key().as_ref())
        );
        assert!(bound["bound_at"].is_string());
        assert_eq!(srv.agent("ws", "dev").await["agent_key"], Value::Null);
        assert_eq!(srv.aws("i-1", Some("main"), Some(&a)).await.0, 200);

        // Without a key, or with another one: 401.
        let (status, body) = srv.aws("i-1", Some("main"), None).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (401, Some("Invalid agent key."))
        );
        assert_eq!(
            body["detail"],
            format!(
                "agent \"main\" is bound to the agent key {}; the request carries no agent key",
                fp(&a)
            )
        );
        let audit = srv.last_audit().await;
        assert_eq!(audit["outcome"], "key_required");
        assert_eq!(audit["agent_id"], srv.agent("ws", "main").await["id"]);
        let (status, body) = srv.aws("i-1", Some("main"), Some(&b)).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (401, Some("Invalid agent key."))
        );
        assert_eq!(
            body["detail"],
            format!(
                "agent \"main\" is bound to the agent key {}, not to {}",
                fp(&a),
                fp(&b)
            )
        );
        let audit = srv.last_audit().await;
        assert_eq!(audit["outcome"], "key_mismatch");
        assert_eq!(audit["reason"], body["detail"]);
        assert_eq!(audit["agent_id"], srv.agent("ws", "main").await["id"]);

        // A captured (proof, time, signature) replays only within 60 s of the server's clock.
        let captured = srv.aws_signed("i-1", Some("main"), Some(&a));
        assert_eq!(srv.post(AWS_PATH, &captured).await.0, 200);
        srv.clock.advance(chrono::Duration::seconds(61));
        let (status, body) = srv.post(AWS_PATH, &captured).await;
        assert_eq!(status, 401);
        assert_eq!(
            body["detail"],
            "agent_key_time is 61 s away from the server's clock (at most 60 s)"
        );
        assert_eq!(srv.last_audit().await["outcome"], "key_mismatch");
        // ... and a signature made 61 s ahead of the server is refused as well.
        srv.clock.advance(chrono::Duration::seconds(-122));
        assert_eq!(srv.post(AWS_PATH, &captured).await.0, 401);
        srv.clock.advance(chrono::Duration::seconds(61));
        assert_eq!(srv.post(AWS_PATH, &captured).await.0, 200);

        // A signature over another proof, or over another agent name, does not verify.
        let mut other_proof = srv.aws_signed("i-1", Some("main"), Some(&a));
        other_proof.body = captured.body.clone();
        other_proof.body.pkcs7 = None; // the signature format: another proof field
        let (status, body) = srv.post(AWS_PATH, &other_proof).await;
        assert_eq!(status, 401);
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .starts_with("agent_key_signature does not verify"),
            "{body}"
        );
        let mut other_name = srv.aws_signed("i-1", Some("dev"), Some(&a));
        other_name.body.agent_name = Some("main".into());
        assert_eq!(srv.post(AWS_PATH, &other_name).await.0, 401);
        // Padding the name does not change what is signed (it is trimmed on both sides).
        let mut padded = srv.aws_signed("i-1", Some("main"), Some(&a));
        padded.body.agent_name = Some("  main ".into());
        assert_eq!(srv.post(AWS_PATH, &padded).await.0, 200);

        // Reset: sessions end, the next signed exchange binds again (even another key).
        assert_eq!(srv.manifest(&old_token).await, 200);
        let (status, _) = srv.reset("ws", "main").await;
        assert_eq!(status, 204);
        assert_eq!(
            srv.manifest(&old_token).await,
            401,
            "reset ends the agent's sessions"
        );
        assert_eq!(srv.agent("ws", "main").await["agent_key"], Value::Null);
        assert_eq!(srv.aws("i-1", Some("main"), Some(&b)).await.0, 200);
        assert_eq!(
            srv.agent("ws", "main").await["agent_key"]["fingerprint"],
            fp(&b)
        );
        assert_eq!(srv.aws("i-1", Some("main"), Some(&a)).await.0, 401);
        let (status, body) = srv.reset("ws", "ghost").await;
        assert_eq!(
            (status, body["message"].as_str()),
            (404, Some("Agent \"ghost\" not found in workspace \"ws\"."))
        );
        assert_eq!(srv.reset("nope", "main").await.0, 404);

        // A new build starts unbound; `require_agent_key` then makes a key mandatory.
        srv.build("ws", aws_agents(json!({"require_agent_key": true})))
            .await;
        let main = srv.agent("ws", "main").await;
        assert_eq!(main["agent_key"], Value::Null);
        assert_eq!(main["require_agent_key"], true);
        let (status, body) = srv.aws("i-1", Some("main"), None).await;
        assert_eq!(status, 401);
        assert_eq!(
            body["detail"],
            "agent \"main\" is declared with require_agent_key; the request carries no agent key"
        );
        let audit = srv.last_audit().await;
        assert_eq!(audit["outcome"], "key_required");
        assert_eq!(audit["agent_id"], main["id"]);
        assert_eq!(
            srv.aws("i-1", Some("dev"), None).await.0,
            200,
            "dev requires none"
        );
        assert_eq!(srv.aws("i-1", Some("main"), Some(&a)).await.0, 200);
        assert_eq!(
            srv.agent("ws", "main").await["agent_key"]["fingerprint"],
            fp(&a)
        );
    }
);

access_test!(
    keys_on_azure_and_gcp,
    Options::default(),
    |srv| async move {
        srv.build("ws", three_clouds(None)).await;
        let (a, b) = (key(3), key(4));
        let now = srv.now();
        let az = srv.azure_proof("vm-1", "sub-1", Some("westeurope"));
        let signed = ExchangeRequest {
            agent_key: key_fields(&az, &a, now),
            body: az.clone(),
        };
        assert_eq!(srv.post(AZURE_PATH, &signed).await.0, 200);
        let other = ExchangeRequest {
            agent_key: key_fields(&az, &b, now),
            body: az.clone(),
        };
        assert_eq!(srv.post(AZURE_PATH, &other).await.0, 401);
        assert_eq!(srv.post(AZURE_PATH, &unsigned(az)).await.0, 401);

        let jwt = srv.gcp_proof("42", "proj-a", "us-central1-a");
        let signed = ExchangeRequest {
            agent_key: key_fields(&jwt, &b, now),
            body: jwt.clone(),
        };
        assert_eq!(srv.post(GCP_PATH, &signed).await.0, 200);
        // The same key and time, but signed as if for AWS: the provider line differs.
        let msg = agent_key::message(
            instauth_types::Provider::Aws,
            None,
            now,
            &jwt.json_web_token,
        );
        let mut wrong = key_fields(&jwt, &b, now);
        wrong.agent_key_signature = Some(agent_key::encode(b.sign(msg.as_bytes()).as_ref()));
        assert_eq!(
            srv.post(
                GCP_PATH,
                &ExchangeRequest {
                    agent_key: wrong,
                    body: jwt
                }
            )
            .await
            .0,
            401
        );
        let ws = srv.workspace("ws").await;
        let fps: Vec<&Value> = ws["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["agent_key"]["fingerprint"])
            .collect();
        assert!(
            fps.contains(&&json!(fp(&a))) && fps.contains(&&json!(fp(&b))),
            "{ws}"
        );
    }
);

access_test!(
    the_server_can_require_keys,
    Options {
        require_agent_keys: true,
        ..Options::default()
    },
    |srv| async move {
        srv.build("ws", three_clouds(None)).await;
        let (status, body) = srv.aws("i-1", None, None).await;
        assert_eq!(status, 401);
        assert_eq!(
            body["detail"],
            "the server requires agent keys (--require-agent-keys); the request carries no agent key"
        );
        assert_eq!(srv.aws("i-1", None, Some(&key(5))).await.0, 200);
        assert_eq!(srv.aws("i-1", None, Some(&key(5))).await.0, 200);
    }
);

access_test!(
    statements_per_exchange_with_keys,
    Options::default(),
    |srv| async move {
        srv.build("ws", three_clouds(Some(json!({"account_id": ACCOUNT}))))
            .await;
        let a = key(6);
        srv.aws("i-1", None, None).await; // warm the pool and statement caches
        let count = srv.store_queries();
        macro_rules! statements {
            ($f:expr) => {{
                srv.state.flush_audit().await;
                let before = count();
                let (status, body) = $f.await;
                (status, count() - before, body)
            }};
        }
        let (status, n, _) = statements!(srv.aws("i-1", None, Some(&a)));
        assert_eq!(
            (status, n),
            (200, 2),
            "the binding exchange: the read and one write"
        );
        let (status, n, _) = statements!(srv.aws("i-1", None, Some(&a)));
        assert_eq!(
            (status, n),
            (200, 1),
            "a bound agent's exchange is one statement"
        );
        let (status, n, _) = statements!(srv.aws("i-1", None, None));
        assert_eq!((status, n), (401, 1), "key required: the read only");
        let mut bad = srv.aws_signed("i-1", None, Some(&a));
        bad.agent_key.agent_key_time = Some(srv.now() + 1);
        let (status, n, _) = statements!(srv.post(AWS_PATH, &bad));
        assert_eq!((status, n), (401, 0), "a bad signature costs no statement");
        let foreign = unsigned(srv.aws_proof("i-1", REGION, OTHER_ACCOUNT));
        let (status, n, _) = statements!(srv.post(AWS_PATH, &foreign));
        assert_eq!(
            (status, n),
            (403, 1),
            "an expectation is checked on the candidate row"
        );
    }
);

access_test!(
    racing_binders_end_with_one_key,
    Options::default(),
    |srv| async move {
        for round in 0..4 {
            let ws = format!("race-{round}");
            let iid = format!("i-race-{round}");
            srv.build(
                &ws,
                json!([{"name": "vm", "type": "aws_instance", "agents": [
                    {"name": "main", "auth": "aws-instance-identity", "instance_id": iid}]}]),
            )
            .await;
            let (a, b) = (key(10 + round), key(20 + round));
            let (ra, rb) = tokio::join!(
                srv.aws(&iid, Some("main"), Some(&a)),
                srv.aws(&iid, Some("main"), Some(&b))
            );
            let mut statuses = [ra.0, rb.0];
            statuses.sort();
            assert_eq!(statuses, [200, 401], "{ra:?} {rb:?}");
            let loser = if ra.0 == 401 { &ra.1 } else { &rb.1 };
            assert_eq!(loser["message"], "Invalid agent key.");
            let winner = if ra.0 == 200 { fp(&a) } else { fp(&b) };
            assert_eq!(
                srv.agent(&ws, "main").await["agent_key"]["fingerprint"],
                winner
            );
            // Two binders with the same key both succeed.
            srv.reset(&ws, "main").await;
            let (r1, r2) = tokio::join!(
                srv.aws(&iid, Some("main"), Some(&a)),
                srv.aws(&iid, Some("main"), Some(&a))
            );
            assert_eq!((r1.0, r2.0), (200, 200), "{r1:?} {r2:?}");
        }
    }
);

impl Srv {
    /// Statements sent on the request path so far, as a closure.
    fn store_queries(&self) -> impl Fn() -> u64 + '_ {
        move || self.state.store().queries_total()
    }
}
