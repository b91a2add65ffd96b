//! Hostile input, table-driven, on SQLite and PostgreSQL over real HTTP: control characters,
//! bidirectional overrides and huge values in every string field and path segment, wrong JSON
//! types, duplicate keys, deep nesting, truncated, oversized and slow bodies. Every case must get
//! its documented 4xx with a JSON error body — never a 5xx — no case may forge a log line, and at
//! the end a valid agent still exchanges and every attempt has its audit record.
#![allow(clippy::unwrap_used)]

mod common;

use common::REGION;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use instauth_api::serve::{serve, ServeConfig};
use instauth_api::{ApiConfig, AppState};
use instauth_store::testing::{TestBackend, TestDb};
use instauth_testkit::TestPki;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "hostile-admin-token";

/// Everything the server logged (human format), shared by the test's subscriber.
fn log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| Mutex::new(Vec::new()))
}

struct LogWriter;
impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        log().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// One request and what the server must answer.
struct Case {
    name: String,
    method: &'static str,
    path: String,
    /// Raw body bytes (sent as given: may be invalid JSON or UTF-8).
    body: Option<Vec<u8>>,
    /// Token exchange requests are audited (one record each).
    exchange: bool,
    status: u16,
}

fn case(
    name: impl Into<String>,
    method: &'static str,
    path: impl Into<String>,
    body: Option<Vec<u8>>,
    status: u16,
) -> Case {
    let path = path.into();
    Case {
        name: name.into(),
        method,
        exchange: method == "POST" && path.ends_with("-instance-identity"),
        path,
        body,
        status,
    }
}

const AWS: &str = "/api/v2/workspaceagents/aws-instance-identity";
const AZURE: &str = "/api/v2/workspaceagents/azure-instance-identity";
const GCP: &str = "/api/v2/workspaceagents/google-instance-identity";

/// Hostile string values, by kind.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// NUL, ESC, newline, other C0/C1 controls: never valid in a name, ID or proof.
    Control,
    /// Bidirectional override and other odd but printable Unicode.
    Odd,
    /// Over the field's limit, the body still under 64 KiB.
    Long,
    /// Makes the body larger than 64 KiB.
    Huge,
    /// Empty or white space only.
    Blank,
}

fn values() -> Vec<(&'static str, String, Kind)> {
    vec![
        ("nul", "a\u{0}b".into(), Kind::Control),
        ("esc", "\u{1b}[2J\u{1b}[31mred".into(), Kind::Control),
        ("newline", "x\nFORGED: injected line".into(), Kind::Control),
        ("crlf", "x\r\nFORGED: injected line".into(), Kind::Control),
        ("c1", "x\u{85}y\u{9b}".into(), Kind::Control),
        ("rtl", "abc\u{202e}fed".into(), Kind::Odd),
        ("emoji", "名前🚀\u{200d}".into(), Kind::Odd),
        ("sql", "'; DROP TABLE audit_log; --".into(), Kind::Odd),
        ("long", "é".repeat(200), Kind::Long),
        ("huge", "A".repeat(70_000), Kind::Huge),
        ("empty", String::new(), Kind::Blank),
        ("spaces", "   ".into(), Kind::Blank),
    ]
}

/// Exchange bodies with one field replaced, and the status SPEC §2 gives: the body over 64 KiB
/// is 413; an invalid field is 400; anything else reaches verification. The AWS proof is a valid
/// one of an instance no workspace declares, so where it still verifies the answer is 404; the
/// Azure and GCP proofs are bogus, so they fail verification (401).
fn exchange_cases(pki: &TestPki) -> Vec<Case> {
    let mut out = Vec::new();
    let mut aws = serde_json::to_value(pki.aws_proof("i-hostile", REGION)).unwrap();
    aws["agent_name"] = json!("main");
    let azure = json!({"signature": instauth_testkit::base64(b"not a pkcs7"), "encoding": "pkcs7", "agent_name": "main"});
    let gcp = json!({"json_web_token": "e30.e30.c2ln", "agent_name": "main"});
    for (path, base, fields) in [
        (
            AWS,
            &aws,
            &["agent_name", "document", "signature", "pkcs7"][..],
        ),
        (AZURE, &azure, &["agent_name", "signature", "encoding"][..]),
        (GCP, &gcp, &["agent_name", "json_web_token"][..]),
    ] {
        for field in fields {
            for (vname, value, kind) in values() {
                let mut body = base.clone();
                body[*field] = json!(value);
                let proof_fails = if path == AWS { 404 } else { 401 };
                let status = match (*field, kind) {
                    (_, Kind::Huge) => 413,
                    ("agent_name", Kind::Control | Kind::Long) => 400,
                    // A blank or odd name is no name or an unknown one: the proof decides.
                    ("agent_name", _) => proof_fails,
                    // The PKCS#7 alone proves the instance: a blank document is not compared,
                    // another one must equal the signed content byte for byte.
                    ("document", Kind::Blank) if value.is_empty() => 404,
                    ("document", _) => 401,
                    // With a PKCS#7 the detached signature is optional; without one the
                    // document and signature prove the instance.
                    ("signature" | "pkcs7", Kind::Blank) if path == AWS => 404,
                    ("encoding", _) => 400,
                    // A JWT is checked by the verifier (only a blank one is missing).
                    ("json_web_token", Kind::Blank) => 400,
                    ("json_web_token", _) => 401,
                    // The other proof fields must be base64.
                    _ => 400,
                };
                out.push(case(
                    format!("{path} {field}={vname}"),
                    "POST",
                    path,
                    Some(body.to_string().into_bytes()),
                    status,
                ));
            }
        }
        // Wrong JSON types for every field.
        for field in fields {
            for (tname, v) in [
                ("number", json!(1)),
                ("array", json!(["x"])),
                ("object", json!({"a": 1})),
                ("bool", json!(true)),
            ] {
                let mut body = base.clone();
                body[*field] = v;
                out.push(case(
                    format!("{path} {field} as {tname}"),
                    "POST",
                    path,
                    Some(body.to_string().into_bytes()),
                    400,
                ));
            }
        }
        let text = base.to_string();
        let shapes: Vec<(&str, Vec<u8>, u16)> = vec![
            (
                "duplicate key",
                format!("{{\"agent_name\":\"a\",{}", &text[1..]).into_bytes(),
                400,
            ),
            (
                "deep nesting",
                format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
                400,
            ),
            (
                "deep object",
                format!(
                    "{{\"agent_name\":{}1{}}}",
                    "{\"a\":".repeat(1000),
                    "}".repeat(1000)
                )
                .into_bytes(),
                400,
            ),
            ("truncated", text.as_bytes()[..text.len() / 2].to_vec(), 400),
            (
                "not utf-8",
                vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
                400,
            ),
            ("empty body", Vec::new(), 400),
            ("json null", b"null".to_vec(), 400),
            ("json array", b"[]".to_vec(), 400),
            (
                "oversized",
                format!("{{\"x\":\"{}\"}}", "y".repeat(70_000)).into_bytes(),
                413,
            ),
        ];
        for (sname, body, status) in shapes {
            out.push(case(
                format!("{path} {sname}"),
                "POST",
                path,
                Some(body),
                status,
            ));
        }
    }
    out
}

fn percent(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Workspace names in admin paths: control characters 400, names no workspace can have 404.
fn path_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (vname, value, kind) in values() {
        if kind == Kind::Huge || kind == Kind::Blank {
            continue;
        }
        let seg = percent(&value);
        let status = if kind == Kind::Control { 400 } else { 404 };
        out.push(case(
            format!("show workspace {vname}"),
            "GET",
            format!("/api/v2/workspaces/{seg}"),
            None,
            status,
        ));
        out.push(case(
            format!("delete workspace {vname}"),
            "DELETE",
            format!("/api/v2/workspaces/{seg}"),
            None,
            status,
        ));
        out.push(case(
            format!("revoke sessions of agent {vname}"),
            "DELETE",
            format!("/api/v2/workspaceagents/{seg}/sessions"),
            None,
            400,
        ));
        let build = json!({"resources": []}).to_string().into_bytes();
        out.push(case(
            format!("build of workspace {vname}"),
            "POST",
            format!("/api/v2/workspaces/{seg}/builds"),
            Some(build),
            400,
        ));
    }
    out.push(case(
        "undecodable path",
        "GET",
        "/api/v2/workspaces/%FF%FE",
        None,
        400,
    ));
    out.push(case(
        "long workspace path",
        "GET",
        format!("/api/v2/workspaces/{}", "a".repeat(8000)),
        None,
        404,
    ));
    out.push(case(
        "unknown route",
        "GET",
        "/api/v2/nothing-here",
        None,
        404,
    ));
    out.push(case("wrong method", "PUT", AWS, None, 405));
    out.push(case(
        "wrong method on admin",
        "PATCH",
        "/api/v2/workspaces",
        None,
        405,
    ));
    out.push(case(
        "audit limit text",
        "GET",
        "/api/v2/audit?limit=%00",
        None,
        400,
    ));
    out.push(case(
        "audit limit huge",
        "GET",
        "/api/v2/audit?limit=99999999999999999999",
        None,
        400,
    ));
    out
}

/// Build bodies with one field replaced: every problem is a field-level 400.
fn build_cases() -> Vec<Case> {
    let base = json!({"resources": [{"name": "vm", "type": "aws_instance", "agents": [
        {"name": "main", "auth": "aws-instance-identity", "instance_id": "i-1"},
        {"name": "sub", "auth": "token", "parent": "main"}]}]});
    let mut out = Vec::new();
    let fields: [(&str, &[&str]); 6] = [
        ("resource name", &["resources", "0", "name"]),
        ("resource type", &["resources", "0", "type"]),
        ("agent name", &["resources", "0", "agents", "0", "name"]),
        ("agent auth", &["resources", "0", "agents", "0", "auth"]),
        (
            "instance id",
            &["resources", "0", "agents", "0", "instance_id"],
        ),
        ("parent", &["resources", "0", "agents", "1", "parent"]),
    ];
    for (fname, at) in fields {
        for (vname, value, kind) in values() {
            if kind == Kind::Odd && matches!(fname, "resource name" | "resource type") {
                continue; // printable names and types are fine
            }
            if kind == Kind::Huge {
                continue; // 70 kB is within the admin body limit: covered by `long`
            }
            let mut body = base.clone();
            let mut slot = &mut body;
            for key in at {
                slot = match key.parse::<usize>() {
                    Ok(i) => &mut slot[i],
                    Err(_) => &mut slot[*key],
                };
            }
            *slot = json!(value);
            if fname == "instance id" && kind == Kind::Odd {
                continue; // an odd but printable instance ID is a valid one
            }
            out.push(case(
                format!("build {fname}={vname}"),
                "POST",
                "/api/v2/workspaces/ws/builds",
                Some(body.to_string().into_bytes()),
                400,
            ));
        }
    }
    out.push(case(
        "build deep nesting",
        "POST",
        "/api/v2/workspaces/ws/builds",
        Some(format!("{{\"resources\":{}{}}}", "[".repeat(3000), "]".repeat(3000)).into_bytes()),
        400,
    ));
    out.push(case(
        "build wrong type",
        "POST",
        "/api/v2/workspaces/ws/builds",
        Some(b"{\"resources\": \"all\"}".to_vec()),
        400,
    ));
    out
}

async fn send(http: &reqwest::Client, url: &str, c: &Case) -> (u16, Vec<u8>, String) {
    let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
    let mut req = http
        .request(method, format!("{url}{}", c.path))
        .bearer_auth(ADMIN);
    if let Some(b) = &c.body {
        req = req
            .header("content-type", "application/json")
            .body(b.clone());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (status, res.bytes().await.unwrap().to_vec(), ctype)
}

/// A raw HTTP request whose body stops half way: 408 with a JSON body after the body timeout.
async fn slow_body(addr: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("POST {AWS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"agent_name\":").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .expect("the server answers within the body timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    (status, text)
}

async fn run(backend: TestBackend) {
    capture_logs();
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let pki = TestPki::new();
    let (state, _writer) = AppState::new(
        store,
        common::verifiers(&pki, &[REGION], "coder"),
        ApiConfig {
            admin_token: ADMIN.into(),
            exchange_rate_limit: 0,
            ..ApiConfig::default()
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let url = format!("http://{addr}");
    let config = ServeConfig {
        header_read_timeout: Duration::from_secs(2),
        body_read_timeout: Duration::from_secs(1),
        ..ServeConfig::default()
    };
    tokio::spawn(serve(
        listener,
        instauth_api::router(state.clone()),
        config,
        std::future::pending(),
    ));
    let http = reqwest::Client::new();

    // A valid agent, before and after.
    let build = json!({"resources": [{"name": "vm", "type": "aws_instance", "agents": [
        {"name": "main", "auth": "aws-instance-identity", "instance_id": "i-good"}]}]});
    let res = http
        .post(format!("{url}/api/v2/workspaces/good/builds"))
        .bearer_auth(ADMIN)
        .json(&build)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let mut proof = pki.aws_proof("i-good", REGION);
    proof.agent_name = Some("main".into());
    let res = http
        .post(format!("{url}{AWS}"))
        .json(&proof)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut exchanges = 1;

    // Proofs that verify but whose claims hold control characters (JSON escapes inside the
    // signed document): 401, never a database error.
    let mut signed_controls = Vec::new();
    for (label, instance, account) in [
        ("NUL in instanceId", "i-\\u0000x", "123456789012"),
        ("newline in instanceId", "i-\\nFORGED", "123456789012"),
        ("ESC in accountId", "i-ok", "1234\\u001b[2J"),
    ] {
        let document = TestPki::aws_document(instance, REGION, account);
        let body = json!({
            "document": document,
            "signature": TestPki::aws_signature(document.as_bytes(), instauth_testkit::keys::TestKey::AwsRegion1024),
            "agent_name": "main",
        });
        signed_controls.push(case(
            format!("signed proof, {label}"),
            "POST",
            AWS,
            Some(body.to_string().into_bytes()),
            401,
        ));
    }

    let cases: Vec<Case> = exchange_cases(&pki)
        .into_iter()
        .chain(signed_controls)
        .chain(path_cases())
        .chain(build_cases())
        .collect();
    assert!(cases.len() >= 150, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let (status, body, ctype) = send(&http, &url, c).await;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let has_message = json.as_ref().is_some_and(|j| j["message"].is_string());
        // The signed proofs must fail on their claims, not on their signature.
        let right_reason = !c.name.starts_with("signed proof")
            || String::from_utf8_lossy(&body).contains("control characters");
        if status != c.status
            || !has_message
            || !right_reason
            || !ctype.starts_with("application/json")
        {
            failures.push(format!(
                "{}: got {status} {} (want {} with a JSON error body)",
                c.name,
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(160)
                    .collect::<String>(),
                c.status
            ));
        }
        if c.exchange {
            exchanges += 1;
        }
    }
    let (status, text) = slow_body(&addr).await;
    if status != 408 || !text.contains("\"message\"") {
        failures.push(format!("slow body: got {text:?}"));
    }
    exchanges += 1;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The valid agent still exchanges, and every attempt is in the audit, the first one too.
    let res = http
        .post(format!("{url}{AWS}"))
        .json(&proof)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    exchanges += 1;
    state.flush_audit().await;
    let audit = state.store().list_audit(1000).await.unwrap();
    let oks: Vec<_> = audit.iter().filter(|r| r.record.outcome == "ok").collect();
    assert_eq!(oks.len(), 2, "both valid exchanges are audited");
    let total: i64 = audit.iter().map(|r| i64::from(r.record.count)).sum();
    assert_eq!(
        total, exchanges,
        "every exchange attempt has its audit record"
    );
    for r in &audit {
        for field in [
            &r.record.agent_name,
            &r.record.instance_id,
            &r.record.remote_addr,
        ] {
            assert!(
                !field.chars().any(char::is_control),
                "stored raw: {field:?}"
            );
        }
    }

    // No hostile value reached the log raw: no forged line, no escape sequence, no NUL.
    let logged = String::from_utf8_lossy(&log().lock().unwrap()).into_owned();
    assert!(
        logged.contains("Token exchange answered."),
        "the log is captured"
    );
    for line in logged.lines() {
        assert!(!line.starts_with("FORGED"), "forged log line: {line:?}");
        assert!(
            !line.contains('\u{1b}') && !line.contains('\0') && !line.contains('\u{202e}'),
            "raw control in log: {line:?}"
        );
    }
    let _ = std::io::stdout().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_sqlite() {
    run(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_postgres() {
    run(TestBackend::Postgres).await;
}
