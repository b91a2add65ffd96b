//! The real `instauth-agent` process on loopback: from spawn to its `connected` log line
//! (AWS IMDSv2 proof from a fake IMDS, exchange, manifest, first heartbeat), against a minimal
//! instauth-like server and, when its release binary has been built (`cargo build --release
//! -p instauth`, or `INSTAUTH_BIN`), against the real `instauth` server on SQLite. Then the
//! agent's resident memory while connected.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../../crates/instauth-agent-sdk/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use instauth_testkit::bench::{self, Criterion};
use instauth_testkit::imds::{AwsImdsMode, FakeImds};
use instauth_testkit::TestPki;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const AGENT: &str = env!("CARGO_BIN_EXE_instauth-agent");
/// Longest wait for a log line of a child process before the bench gives up.
const WAIT: Duration = Duration::from_secs(30);

/// One agent key for every start: the server binds it on the first exchange, and every later
/// start of `main` must present the same key.
fn key_file() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .join("main.key")
}

/// Spawns the agent and returns it once it logged `connected`.
async fn connected_agent(server: &str, imds: &str, interval: &str) -> Child {
    let mut child = Command::new(AGENT)
        .env_clear()
        .env("CODER_AGENT_KEY_FILE", key_file())
        .env("CODER_AGENT_AUTH", "aws-instance-identity")
        .env("CODER_AGENT_URL", server)
        .env("CODER_AGENT_NAME", "main")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
        .env("CODER_AGENT_PROMETHEUS_ADDRESS", "127.0.0.1:0")
        .env("CODER_AGENT_DEBUG_ADDRESS", "127.0.0.1:0")
        .env("CODER_AGENT_HEARTBEAT_INTERVAL", interval)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let connected = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(" connected") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        connected,
        Ok(true),
        "the agent did not connect within {WAIT:?}"
    );
    // Keep draining so the agent never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// The real server on SQLite with the test AWS certificate and one AWS agent `main` on
/// `instance`; returns its process, its URL and the temporary directory.
async fn real_server(pki: &TestPki, instance: &str) -> Option<(Child, String, tempfile::TempDir)> {
    let bin = std::env::var_os("INSTAUTH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(AGENT).with_file_name("instauth"));
    if !bin.exists() {
        println!(
            "agent_process/real_server: {} not built, skipped (cargo build --release -p instauth)",
            bin.display()
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("aws.pem");
    std::fs::write(&certs, pki.aws_certificates_pem("us-east-1")).unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(bin)
        .arg("server")
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        // Every iteration exchanges from 127.0.0.1: measure the agent, not the rate limiter.
        .args(["--exchange-rate-limit", "0"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--aws-certificates")
        .arg(&certs)
        .env_remove("INSTAUTH_POSTGRES_URL")
        .env("INSTAUTH_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if let Some(url) = line.strip_prefix("listening on ") {
                break url.trim().to_owned();
            }
        }
    })
    .await
    .expect("the server did not start listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/v2/workspaces/bench/builds"))
        .bearer_auth(token.trim())
        .json(
            &serde_json::json!({"resources": [{"name": "vm", "type": "aws_instance", "agents": [
            {"name": "main", "auth": "aws-instance-identity", "instance_id": instance}]}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    Some((child, url, dir))
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

fn agent_process(c: &mut Criterion) {
    let rt = bench::runtime();
    let pki = TestPki::new();
    let (server, imds) = rt.block_on(async {
        (
            common::FakeServer::start().await,
            FakeImds::aws(&pki, "i-bench", "us-east-1", AwsImdsMode::Imdsv2Required).await,
        )
    });
    // Spawn to connected, without the kill that ends each run.
    let spawn_to_connected = |iters: u64, url: &str| {
        rt.block_on(async {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut child = connected_agent(url, imds.url(), "15s").await;
                total += start.elapsed();
                child.kill().await.unwrap();
            }
            total
        })
    };
    let mut group = c.benchmark_group("agent_process");
    group.sample_size(20);
    group.bench_function("spawn_to_connected_aws_loopback", |b| {
        b.iter_custom(|iters| spawn_to_connected(iters, &server.url))
    });
    let real = rt.block_on(real_server(&pki, "i-bench"));
    if let Some((_, url, _)) = &real {
        group.bench_function("spawn_to_connected_aws_real_server_sqlite", |b| {
            b.iter_custom(|iters| spawn_to_connected(iters, url))
        });
    }
    group.finish();

    // Memory of a connected agent after a few hundred heartbeats.
    rt.block_on(async {
        let mut child = connected_agent(&server.url, imds.url(), "10ms").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pid = child.id().unwrap();
        let rss = status_kb(pid, "VmRSS:");
        let hwm = status_kb(pid, "VmHWM:");
        println!("agent_process/rss_connected: VmRSS {rss} kB, VmHWM {hwm} kB");
        child.kill().await.unwrap();
    });
}

instauth_testkit::bench_main!(agent_process);
