//! Issue 14's import flow against the real server binary: the seed-shaped Terraform state
//! (one EC2 instance, agents `main` and `dev`) imported with `instauth workspaces apply
//! --terraform-state`, then SPEC §2 with the real public AWS proof of that instance: no name →
//! 409 listing `dev, main`; `main` → 200; `dev` → 200; `instauth audit` lists the attempts and
//! `instauth audit --follow` prints a new one as it happens.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{instauth, Server};
use serde_json::Value;

const INSTANCE: &str = "i-076e9b91f7c420782";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn fixture(name: &str) -> String {
    repo("crates/instauth-client/tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Runs `instauth ARGS` against `server`; returns (success, stdout, stderr).
fn cli(home: &Path, server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = instauth(home)
        .args(args)
        .env("INSTAUTH_URL", &server.url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The public AWS proof of [`INSTANCE`], with `agent_name` set or removed.
fn proof(agent_name: Option<&str>) -> Value {
    let text = std::fs::read_to_string(repo("docs/examples/aws-exchange.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let body = v.as_object_mut().unwrap();
    body.remove("agent_name");
    if let Some(name) = agent_name {
        body.insert("agent_name".into(), name.into());
    }
    v
}

fn exchange(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    agent_name: Option<&str>,
) -> (u16, Value) {
    rt.block_on(async {
        let res = reqwest::Client::new()
            .post(format!(
                "{}{}",
                server.url,
                instauth_types::routes::AWS_INSTANCE_IDENTITY
            ))
            .json(&proof(agent_name))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    })
}

/// `instauth audit -o json` until it lists `n` records (the audit writer works in the
/// background), at most 20 s.
fn audit_records(home: &Path, server: &Server, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, stdout, stderr) = cli(home, server, &["audit", "-o", "json"]);
        assert!(ok, "{stderr}");
        let records: Vec<Value> = serde_json::from_str(&stdout).unwrap();
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log still lists {} of {n} records",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn imported_seed_state_gives_409_then_200_for_each_agent_and_the_audit_follows() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start({
        let mut c = instauth(home.path());
        c.args(["server", "--listen", "127.0.0.1:0"]);
        c
    });
    let rt = tokio::runtime::Runtime::new().unwrap();

    let (ok, stdout, stderr) = cli(
        home.path(),
        &server,
        &[
            "workspaces",
            "apply",
            "alice",
            "--terraform-state",
            &fixture("aws-multi-agent.json"),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("workspace alice build 1\n"), "{stdout}");
    let (ok, stdout, stderr) = cli(
        home.path(),
        &server,
        &["workspaces", "show", "alice", "-o", "json"],
    );
    assert!(ok, "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        shown["resources"],
        serde_json::json!([{"name": "dev", "type": "aws_instance"}])
    );
    for agent in shown["agents"].as_array().unwrap() {
        assert_eq!(agent["instance_id"], INSTANCE);
        assert_eq!(agent["auth"], "aws-instance-identity");
    }

    // SPEC §2 with the real AWS proof of the imported instance.
    let (status, body) = exchange(&rt, &server, None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["agent_names"], serde_json::json!(["dev", "main"]));
    assert_eq!(
        body["message"],
        format!(
            "Multiple agents found with instance ID \"{INSTANCE}\". Set CODER_AGENT_NAME to one of: dev, main"
        )
    );
    for name in ["main", "dev"] {
        let (status, body) = exchange(&rt, &server, Some(name));
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body["session_token"].as_str().unwrap().starts_with("ias2_"));
    }

    // The audit lists the three attempts, newest first.
    let records = audit_records(home.path(), &server, 3);
    let seen: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap(),
                r["agent_name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("ok", "dev"), ("ok", "main"), ("conflict", "")]);
    for r in &records {
        assert_eq!(r["instance_id"], INSTANCE);
        assert_eq!(r["provider"], "aws");
    }
    assert!(records[0]["id"].as_i64().unwrap() > records[2]["id"].as_i64().unwrap());
    let (ok, table, stderr) = cli(home.path(), &server, &["audit", "--limit", "2"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("OUTCOME"),
        "{table}"
    );
    assert!(
        lines[1].contains(" ok ") && lines[1].contains(" dev "),
        "{table}"
    );

    // --follow prints what is there, oldest first, then each new attempt.
    let mut follower = instauth(home.path())
        .args(["audit", "--follow", "-o", "json", "--interval", "200ms"])
        .env("INSTAUTH_URL", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no {what} from --follow within 20 s: {e}"));
        serde_json::from_str(&line).unwrap()
    };
    let backlog: Vec<String> = (0..3)
        .map(|_| next("backlog")["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(backlog, ["conflict", "ok", "ok"]);
    let (status, _) = exchange(&rt, &server, Some("nobody"));
    assert_eq!(status, 404);
    let new = next("new record");
    assert_eq!(new["outcome"], "not_found");
    assert_eq!(new["agent_name"], "nobody");
    assert!(new["id"].as_i64().unwrap() > records[0]["id"].as_i64().unwrap());
    follower.kill().unwrap();
    follower.wait().unwrap();

    assert!(server.terminate().success());
}

#[test]
fn a_broken_state_is_refused_with_every_problem_and_nothing_applied() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start({
        let mut c = instauth(home.path());
        c.args(["server", "--listen", "127.0.0.1:0"]);
        c
    });
    let (ok, stdout, stderr) = cli(
        home.path(),
        &server,
        &[
            "workspaces",
            "apply",
            "alice",
            "--terraform-state",
            &fixture("broken-many.json"),
        ],
    );
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("7 problems in the Terraform state:"),
        "{stderr}"
    );
    for address in [
        "aws_instance.dev:",
        "coder_agent.ai:",
        "coder_agent.dev[1]:",
        "coder_agent.gcp:",
        "coder_agent.main:",
        "coder_agent_instance.orphan:",
        "coder_devcontainer.lost:",
    ] {
        assert!(
            stderr.contains(&format!("\n  {address} ")),
            "{address}: {stderr}"
        );
    }
    let (ok, stdout, _) = cli(home.path(), &server, &["workspaces", "list", "-o", "json"]);
    assert!(ok);
    assert_eq!(stdout.trim(), "[]");

    // -f and --terraform-state exclude each other; one of them is required.
    for args in [
        &["workspaces", "apply", "alice"][..],
        &[
            "workspaces",
            "apply",
            "alice",
            "-f",
            "x.json",
            "--terraform-state",
            "y.json",
        ],
    ] {
        let out = instauth(home.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
    // --dry-run prints the body and needs no server or token.
    let out = instauth(home.path())
        .args([
            "workspaces",
            "apply",
            "alice",
            "--dry-run",
            "--terraform-state",
            &fixture("aws-multi-agent.json"),
        ])
        .env("INSTAUTH_URL", "http://127.0.0.1:1")
        .env("INSTAUTH_ADMIN_TOKEN_FILE", home.path().join("absent"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let body: instauth_types::BuildRequest = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body.resources.len(), 1);
    assert_eq!(body.resources[0].agents.len(), 2);
}
