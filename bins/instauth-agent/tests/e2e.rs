//! End to end: the real `instauth` server, real `instauth-agent` processes, fake cloud metadata
//! services serving proofs signed with the test PKI. Run on SQLite and on PostgreSQL. Each VM
//! has its own state directory, where its agents keep their keys.
//!
//! The server binary is taken from `INSTAUTH_BIN`, or from beside this package's binary (the
//! same target directory): build it first with `cargo build -p instauth`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use instauth_store::testing::TestDb;
use instauth_store::DatabaseConfig;
use instauth_testkit::imds::{AwsImdsMode, FakeImds};
use instauth_testkit::TestPki;
use instauth_types::WorkspaceInfo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const AGENT: &str = env!("CARGO_BIN_EXE_instauth-agent");
const WAIT: Duration = Duration::from_secs(60);

fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("INSTAUTH_BIN") {
        return p.into();
    }
    let p = PathBuf::from(AGENT).with_file_name("instauth");
    assert!(
        p.exists(),
        "the server binary {} is missing: build it first with `cargo build -p instauth` \
         (same CARGO_TARGET_DIR and profile), or set INSTAUTH_BIN",
        p.display()
    );
    p
}

/// Lines a child printed on one stream, collected as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(&self, stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        let lines = self.0.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(stream).lines();
            while let Ok(Some(l)) = r.next_line().await {
                lines.lock().unwrap().push(l);
            }
        });
    }

    fn find(&self, needle: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    async fn wait_for(&self, needle: &str, what: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.find(needle) {
                return l;
            }
            assert!(
                start.elapsed() < WAIT,
                "{what}: no line with {needle:?} after {WAIT:?}; output:\n{}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Server {
    child: Child,
    url: String,
    admin_token: String,
    http: reqwest::Client,
    stderr: Lines,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start(pki: &TestPki, db: &TestDb) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let aws = dir.path().join("aws.pem");
        std::fs::write(&aws, pki.aws_certificates_pem("us-east-1")).unwrap();
        let azure = dir.path().join("azure-roots.pem");
        std::fs::write(&azure, pki.azure_root_pem()).unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, TestPki::gcp_jwks_json()).unwrap();
        let data = dir.path().join("data");

        let mut cmd = Command::new(server_binary());
        cmd.arg("server")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--aws-certificates")
            .arg(&aws)
            .arg("--azure-roots")
            .arg(&azure)
            .arg("--google-jwks-url")
            .arg(&jwks)
            .args(["--google-audience", "coder", "--heartbeat-interval", "1s"])
            .env_remove("INSTAUTH_POSTGRES_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let DatabaseConfig::Postgres { url } = &db.config {
            cmd.args(["--postgres-url", url]);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = Lines::default();
        stdout.follow(child.stdout.take().unwrap());
        let stderr = Lines::default();
        stderr.follow(child.stderr.take().unwrap());
        let start = Instant::now();
        let line = loop {
            if let Some(l) = stdout.find("listening on http://") {
                break l;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the server exited with {status}:\n{}", stderr.all());
            }
            assert!(
                start.elapsed() < WAIT,
                "the server did not start:\n{}",
                stderr.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let url = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_owned();
        let admin_token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Server {
            child,
            url,
            admin_token,
            http: reqwest::Client::new(),
            stderr,
            dir,
        }
    }

    /// A fresh state directory for one VM's agents (`XDG_STATE_HOME`).
    fn vm_state(&self, vm: &str) -> String {
        let dir = self.dir.path().join("vms").join(vm);
        std::fs::create_dir_all(&dir).unwrap();
        dir.to_str().unwrap().to_owned()
    }

    /// Runs the admin CLI (`instauth workspaces ...`) against this server.
    async fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(server_binary())
            .arg("workspaces")
            .args(args)
            .args(["--url", &self.url, "--token", &self.admin_token])
            .env_remove("INSTAUTH_URL")
            .env_remove("INSTAUTH_ADMIN_TOKEN")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "instauth workspaces {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The bound key of agent `name` of `workspace`: (fingerprint, bound_at).
    async fn bound_key(&self, workspace: &str, name: &str) -> Option<(String, String)> {
        let ws = self.workspace(workspace).await;
        let agent = ws["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()
            .clone();
        let key = &agent["agent_key"];
        key.is_object().then(|| {
            (
                key["fingerprint"].as_str().unwrap().to_owned(),
                key["bound_at"].as_str().unwrap().to_owned(),
            )
        })
    }

    async fn create_build(&self, workspace: &str, resource_type: &str, agents: serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}/api/v2/workspaces/{workspace}/builds", self.url))
            .bearer_auth(&self.admin_token)
            .json(&serde_json::json!({
                "resources": [{"name": "vm", "type": resource_type, "agents": agents}]
            }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 201, "create build {workspace}: {body}");
    }

    async fn workspace(&self, workspace: &str) -> serde_json::Value {
        let resp = self
            .http
            .get(format!("{}/api/v2/workspaces/{workspace}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "show {workspace}");
        resp.json().await.unwrap()
    }

    /// Waits until every agent of `workspace` has `field == value`.
    async fn wait_agents(&self, workspace: &str, field: &str, value: &str) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let ws = self.workspace(workspace).await;
            let agents = ws["agents"].as_array().unwrap();
            if !agents.is_empty() && agents.iter().all(|a| a[field] == value) {
                return ws;
            }
            assert!(
                start.elapsed() < WAIT,
                "{workspace}: agents never all {field}={value}: {ws:#}\nserver log:\n{}",
                self.stderr.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Agent {
    child: Child,
    stderr: Lines,
    name: String,
}

impl Agent {
    fn start(server: &Server, auth: &str, name: Option<&str>, env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(AGENT);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CODER_AGENT_AUTH", auth)
            .env("CODER_AGENT_URL", &server.url)
            .env("CODER_AGENT_PROMETHEUS_ADDRESS", "127.0.0.1:0")
            .env("CODER_AGENT_DEBUG_ADDRESS", "127.0.0.1:0")
            .env("CODER_AGENT_HEARTBEAT_INTERVAL", "1s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(n) = name {
            cmd.env("CODER_AGENT_NAME", n);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = Lines::default();
        stderr.follow(child.stderr.take().unwrap());
        Agent {
            child,
            stderr,
            name: name.unwrap_or("(unnamed)").to_owned(),
        }
    }

    async fn terminate(mut self) {
        let pid = self.child.id().unwrap();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            exit.success(),
            "agent {} exited with {exit}:\n{}",
            self.name,
            self.stderr.all()
        );
    }
}

async fn scenario(db: TestDb) {
    let pki = TestPki::new();
    let server = Server::start(&pki, &db).await;

    // AWS: one instance, two agents; a third agent without a name is refused with the names.
    let instance = "i-0e2e0000000000001";
    server
        .create_build(
            "aws-multi",
            "aws_instance",
            serde_json::json!([
                {"name": "main", "auth": "aws-instance-identity", "instance_id": instance},
                {"name": "dev", "auth": "aws-instance-identity", "instance_id": instance},
            ]),
        )
        .await;
    let aws = FakeImds::aws(&pki, instance, "us-east-1", AwsImdsMode::Imdsv2Required).await;
    let aws_state = server.vm_state("aws");
    let aws_env = [
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", aws.url()),
        ("XDG_STATE_HOME", aws_state.as_str()),
    ];
    let main = Agent::start(&server, "aws-instance-identity", Some("main"), &aws_env);
    let dev = Agent::start(&server, "aws-instance-identity", Some(" dev "), &aws_env);
    let unnamed = Agent::start(&server, "aws-instance-identity", None, &aws_env);
    main.stderr.wait_for("connected", "agent main").await;
    dev.stderr.wait_for("connected", "agent dev").await;
    let ws = server.wait_agents("aws-multi", "status", "connected").await;
    assert_eq!(ws["agents"].as_array().unwrap().len(), 2);
    let line = unnamed
        .stderr
        .wait_for("set CODER_AGENT_NAME to one of: dev, main", "unnamed agent")
        .await;
    assert!(line.contains("ERROR"), "{line}");
    assert!(unnamed.stderr.find("connected").is_none());

    // Azure and GCP: one agent each.
    let vm_id = "2f0c0e4e-0000-4000-8000-0000000000e2";
    server
        .create_build(
            "azure-one",
            "azurerm_linux_virtual_machine",
            serde_json::json!([{"name": "main", "auth": "azure-instance-identity", "instance_id": vm_id}]),
        )
        .await;
    let azure = FakeImds::azure(&pki, vm_id).await;
    let azure_state = server.vm_state("azure");
    let azure_agent = Agent::start(
        &server,
        "azure-instance-identity",
        Some("main"),
        &[
            ("CODER_AGENT_AZURE_METADATA_URL", azure.url()),
            ("XDG_STATE_HOME", &azure_state),
        ],
    );
    let gce_id = "4242000000000000042";
    server
        .create_build(
            "gcp-one",
            "google_compute_instance",
            serde_json::json!([{"name": "main", "auth": "google-instance-identity", "instance_id": gce_id}]),
        )
        .await;
    let gcp = FakeImds::gcp(gce_id).await;
    let gcp_agent = Agent::start(
        &server,
        "google-instance-identity",
        None,
        &[
            ("GCE_METADATA_HOST", gcp.host()),
            ("CODER_AGENT_GOOGLE_AUDIENCE", "coder"),
            ("XDG_STATE_HOME", &server.vm_state("gcp")),
        ],
    );
    azure_agent
        .stderr
        .wait_for("connected", "azure agent")
        .await;
    gcp_agent.stderr.wait_for("connected", "gcp agent").await;
    server.wait_agents("azure-one", "status", "connected").await;
    server.wait_agents("gcp-one", "status", "connected").await;
    server
        .wait_agents("aws-multi", "lifecycle_state", "ready")
        .await;

    // Agent keys: `main` and `dev` on one VM each bound their own key, kept in the VM's state
    // directory, and `workspaces show` names them.
    let key_dir = std::path::Path::new(&aws_state).join("instauth-agent");
    assert!(key_dir.join("main.key").exists() && key_dir.join("dev.key").exists());
    let (main_fp, main_bound_at) = server.bound_key("aws-multi", "main").await.unwrap();
    let (dev_fp, _) = server.bound_key("aws-multi", "dev").await.unwrap();
    assert_ne!(main_fp, dev_fp);
    assert!(
        main.stderr.find(&main_fp).is_some(),
        "main logs its key's fingerprint"
    );
    let shown = server.cli(&["show", "aws-multi"]).await;
    assert!(
        shown.contains(&format!("bound {main_fp}")) && shown.contains(&format!("bound {dev_fp}")),
        "{shown}"
    );
    // A third process on the VM claims `main` with a key of its own: refused, and it says why.
    let intruder_key = format!("{aws_state}/intruder.key");
    let intruder = Agent::start(
        &server,
        "aws-instance-identity",
        Some("main"),
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", aws.url()),
            ("CODER_AGENT_KEY_FILE", &intruder_key),
        ],
    );
    let line = intruder
        .stderr
        .wait_for("The server refused this agent's key", "intruder")
        .await;
    assert!(line.contains("ERROR") && line.contains(&main_fp), "{line}");
    assert!(
        line.contains("instauth workspaces reset-key WORKSPACE main"),
        "{line}"
    );
    assert!(intruder.stderr.find("connected").is_none());
    intruder.terminate().await;
    assert_eq!(
        server.bound_key("aws-multi", "main").await.unwrap().0,
        main_fp
    );
    // The admin resets `main`'s binding: its sessions end, and the real `main` binds its key
    // again on its next exchange.
    let out = server.cli(&["reset-key", "aws-multi", "main"]).await;
    assert!(out.contains("key binding reset"), "{out}");
    let start = Instant::now();
    loop {
        if let Some((fp, at)) = server.bound_key("aws-multi", "main").await {
            if at != main_bound_at {
                assert_eq!(fp, main_fp, "the real main rebound its own key");
                break;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "main never rebound its key:\n{}",
            main.stderr.all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.wait_agents("aws-multi", "status", "connected").await;

    // A session deleted server-side: the agent gets 401, exchanges again and stays connected
    // (its heartbeats keep landing after the revocation).
    let az: WorkspaceInfo = serde_json::from_value(server.workspace("azure-one").await).unwrap();
    let resp = server
        .http
        .delete(format!(
            "{}/api/v2/workspaceagents/{}/sessions",
            server.url, az.agents[0].id
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    azure_agent
        .stderr
        .wait_for(
            "obtaining a new one",
            "azure agent after its session was revoked",
        )
        .await;
    let last_heartbeat = |ws: serde_json::Value| {
        let ws: WorkspaceInfo = serde_json::from_value(ws).unwrap();
        ws.agents[0].last_connected_at
    };
    let after_revoke = last_heartbeat(server.workspace("azure-one").await);
    let start = Instant::now();
    while last_heartbeat(server.workspace("azure-one").await) <= after_revoke {
        assert!(start.elapsed() < WAIT, "no heartbeat after re-exchange");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.wait_agents("azure-one", "status", "connected").await;

    // A new build ends the old sessions: the agents get 401, exchange again, and connect as
    // the new build's agents.
    server
        .create_build(
            "aws-multi",
            "aws_instance",
            serde_json::json!([
                {"name": "main", "auth": "aws-instance-identity", "instance_id": instance},
                {"name": "dev", "auth": "aws-instance-identity", "instance_id": instance},
            ]),
        )
        .await;
    let ws = server.wait_agents("aws-multi", "status", "connected").await;
    assert_eq!(ws["build_number"], 2);
    main.stderr
        .wait_for("obtaining a new one", "agent main after a new build")
        .await;

    // SIGTERM: shutting_down, then off, exit 0.
    for a in [main, dev, azure_agent, gcp_agent, unnamed] {
        a.terminate().await;
    }
    server
        .wait_agents("aws-multi", "lifecycle_state", "off")
        .await;
    server
        .wait_agents("azure-one", "lifecycle_state", "off")
        .await;
    server
        .wait_agents("gcp-one", "lifecycle_state", "off")
        .await;

    let mut child = server.child;
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_connect_on_sqlite() {
    scenario(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_connect_on_postgres() {
    scenario(TestDb::postgres().await).await;
}
