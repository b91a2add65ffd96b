//! The README quickstart, step by step: `instauth server` with no flags, `instauth workspaces
//! apply`, then a real AWS proof (public test vector; AWS still signs with its key) posted with
//! curl gives a session token; without a name the two agents conflict.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{instauth, Server};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn curl(url: &str, body_file: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST", "--data-binary"])
        .arg(format!("@{body_file}"))
        .arg(url)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap())
}

#[test]
fn quickstart_flow_gives_a_session_token() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start({
        let mut c = instauth(home.path());
        c.args(["server", "--listen", "127.0.0.1:0"]);
        c
    });
    let token_file = home.path().join(".local/share/instauth/admin-token");
    let meta = std::fs::metadata(&token_file).unwrap();
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );

    let out = instauth(home.path())
        .args(["workspaces", "apply", "dev", "-f", &example("build.json")])
        .env("INSTAUTH_URL", &server.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("workspace dev build 1"), "{stdout}");

    let url = format!(
        "{}/api/v2/workspaceagents/aws-instance-identity",
        server.url
    );
    let (status, body) = curl(&url, &example("aws-exchange.json"));
    assert_eq!(status, 200, "{body}");
    assert!(body["session_token"].as_str().unwrap().starts_with("ias2_"));

    // The same proof without agent_name: two candidates, 409 naming them.
    let no_name = home.path().join("no-name.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example("aws-exchange.json")).unwrap())
            .unwrap();
    v.as_object_mut().unwrap().remove("agent_name");
    std::fs::write(&no_name, v.to_string()).unwrap();
    let (status, body) = curl(&url, no_name.to_str().unwrap());
    assert_eq!(status, 409);
    assert_eq!(body["agent_names"], serde_json::json!(["dev", "main"]));

    for args in [
        &["workspaces", "list"][..],
        &["workspaces", "show", "dev", "-o", "json"],
    ] {
        let out = instauth(home.path())
            .args(args)
            .env("INSTAUTH_URL", &server.url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("main"));
    }
    let out = instauth(home.path())
        .args(["workspaces", "delete", "dev"])
        .env("INSTAUTH_URL", &server.url)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = instauth(home.path())
        .args(["workspaces", "show", "dev"])
        .env("INSTAUTH_URL", &server.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Workspace \"dev\" not found."));
    assert!(server.terminate().success());

    // Every exchange attempt was audited, and the queue was flushed on SIGTERM.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcomes: Vec<String> = rt.block_on(async {
        let store = instauth_store::Store::open(instauth_store::DatabaseConfig::Sqlite {
            path: home.path().join(".local/share/instauth/instauth.db"),
        })
        .await
        .unwrap();
        let rows = store.list_audit(10).await.unwrap();
        rows.into_iter().map(|r| r.record.outcome).collect()
    });
    assert_eq!(outcomes, ["conflict", "ok"]);
}
