//! Operating the server binary: private files, key rotation, timeouts, shutdown with clients
//! connected, start-up checks of flags, and two replicas started together on one PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{instauth, Server};
use instauth_store::testing::TestDb;
use instauth_store::{DatabaseConfig, Store};
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples")
        .join(name)
}

/// The real public AWS proof of the quickstart, naming `main`.
fn aws_proof() -> Value {
    serde_json::from_str(&std::fs::read_to_string(example("aws-exchange.json")).unwrap()).unwrap()
}

fn build() -> Value {
    serde_json::from_str(&std::fs::read_to_string(example("build.json")).unwrap()).unwrap()
}

struct Api {
    url: String,
    admin: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn new(url: &str, admin_token_file: &Path) -> Api {
        Api {
            url: url.to_owned(),
            admin: std::fs::read_to_string(admin_token_file)
                .unwrap()
                .trim()
                .to_owned(),
            http: reqwest::blocking::Client::new(),
        }
    }

    fn apply(&self, ws: &str) {
        let res = self
            .http
            .post(format!("{}/api/v2/workspaces/{ws}/builds", self.url))
            .bearer_auth(&self.admin)
            .json(&build())
            .send()
            .unwrap();
        assert_eq!(res.status(), 201);
    }

    fn delete(&self, ws: &str) {
        let res = self
            .http
            .delete(format!("{}/api/v2/workspaces/{ws}", self.url))
            .bearer_auth(&self.admin)
            .send()
            .unwrap();
        assert_eq!(res.status(), 204);
    }

    fn token(&self) -> String {
        let res = self
            .http
            .post(format!(
                "{}/api/v2/workspaceagents/aws-instance-identity",
                self.url
            ))
            .json(&aws_proof())
            .send()
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json::<Value>().unwrap()["session_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn manifest(&self, token: &str) -> u16 {
        self.http
            .get(format!("{}/api/v2/workspaceagents/me/manifest", self.url))
            .header("Coder-Session-Token", token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    }
}

/// The signing key id a session token names.
fn key_id(token: &str) -> u32 {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.strip_prefix("ias2_").unwrap())
        .unwrap();
    u32::from_be_bytes(raw[..4].try_into().unwrap())
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn server_in(home: &Path, extra: &[&str]) -> Server {
    Server::start_logged({
        let mut c = instauth(home);
        c.args(["server", "--listen", "127.0.0.1:0"]).args(extra);
        c
    })
}

#[cfg(unix)]
#[test]
fn files_are_private_and_loose_modes_are_tightened_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join(".local/share/instauth");
    let server = server_in(home.path(), &[]);
    let api = Api::new(&server.url, &data.join("admin-token"));
    api.apply("dev");
    assert_eq!(mode(&data), 0o700);
    for f in [
        "instauth.db",
        "instauth.db-wal",
        "instauth.db-shm",
        "admin-token",
    ] {
        let p = data.join(f);
        assert!(p.exists(), "{f} exists");
        assert_eq!(mode(&p), 0o600, "{f}");
    }
    assert!(server.terminate().success());

    // A careless copy left them readable: the next start tightens them and says so.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["instauth.db", "admin-token"] {
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = server_in(home.path(), &[]);
    assert!(server.wait_for_log("Tightened permissions"));
    let log = server.log.lock().unwrap().clone();
    assert!(
        !log.contains('\u{1b}'),
        "no colour escapes in a piped log: {log:?}"
    );
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("instauth.db")), 0o600);
    assert_eq!(mode(&data.join("admin-token")), 0o600);
    assert!(server.terminate().success());
}

#[test]
fn keys_rotate_keeps_old_tokens_until_their_key_is_dropped() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join(".local/share/instauth");
    let server = server_in(home.path(), &[]);
    let api = Api::new(&server.url, &data.join("admin-token"));
    api.apply("dev");
    let old = api.token();
    assert_eq!(key_id(&old), 1);

    let out = instauth(home.path())
        .args(["keys", "rotate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("session key 2"));

    // The running server meets a token signed by the new key before its periodic reload, so
    // it reads the keys again; until then it signs with the key it knows, and both verify.
    let new_by_other_process = {
        let other = server_in(home.path(), &[]);
        let t = Api::new(&other.url, &data.join("admin-token")).token();
        assert!(other.terminate().success());
        t
    };
    assert_eq!(key_id(&new_by_other_process), 2, "the new key signs");
    assert_eq!(api.manifest(&new_by_other_process), 200);
    assert_eq!(api.manifest(&old), 200, "the old key still verifies");
    assert_eq!(
        key_id(&api.token()),
        2,
        "and the server now signs with key 2"
    );
    assert!(server.terminate().success());

    // Once the old key's tokens can have expired, the servers delete it: its tokens are 401.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(DatabaseConfig::Sqlite {
            path: data.join("instauth.db"),
        })
        .await
        .unwrap();
        let far = instauth_store::now() + chrono::Duration::days(1);
        assert_eq!(store.drop_retired_session_keys(far).await.unwrap(), 1);
    });
    let server = server_in(home.path(), &[]);
    let api = Api::new(&server.url, &data.join("admin-token"));
    assert_eq!(api.manifest(&old), 401);
    assert_eq!(api.manifest(&new_by_other_process), 200);
    assert!(server.terminate().success());
}

#[test]
fn not_found_and_conflict_carry_the_configured_retry_after() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join(".local/share/instauth");
    let server = server_in(home.path(), &["--retry-after", "7s"]);
    let api = Api::new(&server.url, &data.join("admin-token"));
    let exchange = |body: &Value| {
        api.http
            .post(format!(
                "{}/api/v2/workspaceagents/aws-instance-identity",
                api.url
            ))
            .json(body)
            .send()
            .unwrap()
    };
    let res = exchange(&aws_proof());
    assert_eq!(res.status(), 404, "no workspace declares the instance yet");
    assert_eq!(res.headers()["retry-after"], "7");
    api.apply("dev");
    let mut unnamed = aws_proof();
    unnamed.as_object_mut().unwrap().remove("agent_name");
    let res = exchange(&unnamed);
    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["retry-after"], "7");
    assert!(server.terminate().success());
}

#[test]
fn a_half_sent_header_is_cut_off() {
    let home = tempfile::tempdir().unwrap();
    let server = server_in(home.path(), &[]);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server closes the connection (possibly after a 408); it never answers 200.
    let _ = conn.read_to_end(&mut buf);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "closed after {took:?}, want the 10 s header timeout"
    );
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    assert!(server.terminate().success());
}

#[test]
fn sigterm_with_idle_and_slow_clients_exits_within_the_deadline() {
    let home = tempfile::tempdir().unwrap();
    let server = server_in(home.path(), &["--shutdown-deadline", "2s"]);
    let addr = server.url.trim_start_matches("http://").to_owned();
    // An idle keep-alive connection after one request, and one stuck mid-headers.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).unwrap() > 0);
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"POST /api/v2/workspaceagents/aws-instance-identity HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{").unwrap();
    let started = Instant::now();
    assert!(server.terminate().success(), "SIGTERM exits 0");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "stopped after {took:?}");
}

#[test]
fn out_of_range_durations_fail_at_start_naming_the_flag() {
    let home = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--session-ttl", "1000000y"),
        ("--session-ttl", "0s"),
        ("--heartbeat-interval", "0s"),
        ("--retry-after", "2h"),
        ("--audit-retention", "1s"),
        ("--shutdown-deadline", "1d"),
        ("--session-ttl", "soon"),
    ] {
        let out = instauth(home.path())
            .args(["server", "--listen", "127.0.0.1:0", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_start_together_on_an_empty_postgres_and_share_sessions() {
    let db = TestDb::postgres_unmigrated().await;
    let DatabaseConfig::Postgres { url } = db.config.clone() else {
        unreachable!()
    };
    let homes = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let token_file = homes[0].path().join("admin-token");
    std::fs::write(&token_file, "shared-admin-token\n").unwrap();
    let start = |home: &Path| {
        let mut c = instauth(home);
        c.args(["server", "--listen", "127.0.0.1:0"])
            .env("INSTAUTH_POSTGRES_URL", &url)
            .env("INSTAUTH_ADMIN_TOKEN_FILE", &token_file);
        c
    };
    // Both migrate the empty database at the same moment.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start(start(homes[0].path())));
        let b = s.spawn(|| Server::start(start(homes[1].path())));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (url_a, url_b) = (a.url.clone(), b.url.clone());
    let token_file2 = token_file.clone();
    tokio::task::spawn_blocking(move || {
        let api_a = Api::new(&url_a, &token_file2);
        let api_b = Api::new(&url_b, &token_file2);
        api_a.apply("dev");
        let token = api_a.token();
        assert_eq!(api_b.manifest(&token), 200, "a session of A works on B");
        api_b.apply("dev");
        assert_eq!(
            api_a.manifest(&token),
            401,
            "a rebuild through B revokes on A"
        );
        let token = api_b.token();
        assert_eq!(api_a.manifest(&token), 200);
        api_a.delete("dev");
        assert_eq!(
            api_b.manifest(&token),
            401,
            "a delete through A revokes on B"
        );
    })
    .await
    .unwrap();
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
