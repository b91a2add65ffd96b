//! `instauth identity verify` on the real public vectors (`testdata/real-vectors/`) and on a
//! generated GCP token, through the built binary.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::path::{Path, PathBuf};
use std::process::Command;

use instauth_testkit::TestPki;

fn vector(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/real-vectors")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(dir: &Path, provider: &str, body: &serde_json::Value, extra: &[&str]) -> Outcome {
    let file = dir.join(format!("{provider}-{}.json", rand_suffix(body)));
    std::fs::write(&file, body.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_instauth"))
        .args(["identity", "verify", "--provider", provider])
        .arg(&file)
        .args(extra)
        // Keep the server's environment from leaking into the trust flags.
        .env_remove("INSTAUTH_AWS_CERTIFICATES")
        .env_remove("INSTAUTH_AZURE_ROOTS")
        .env_remove("INSTAUTH_AZURE_INTERMEDIATES")
        .env_remove("INSTAUTH_GOOGLE_JWKS_URL")
        .env_remove("INSTAUTH_GOOGLE_AUDIENCE")
        .env_remove("INSTAUTH_AWS_ACCOUNTS")
        .env_remove("INSTAUTH_GCP_PROJECTS")
        .env_remove("INSTAUTH_AZURE_SUBSCRIPTIONS")
        .env_remove("INSTAUTH_AZURE_AIA")
        .output()
        .unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn rand_suffix(body: &serde_json::Value) -> String {
    format!("{:016x}", fnv1a(body.to_string().as_bytes()))
}

/// A tiny FNV-1a so test files of different bodies get different names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn identity(out: &Outcome) -> serde_json::Value {
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap()
}

const AZURE_AT: &str = "2022-04-19T02:00:00Z";

#[test]
fn aws_rsa1024_signature_vector_verifies_with_and_without_at() {
    let dir = tempfile::tempdir().unwrap();
    let body = serde_json::json!({
        "document": vector("coder-iid-rsa1024-us-east-1-i-076e9b91f7c420782.document.json"),
        "signature": vector("coder-iid-rsa1024-us-east-1-i-076e9b91f7c420782.signature.b64"),
    });
    for extra in [&[][..], &["--at", "2021-01-01T00:00:00Z"]] {
        let id = identity(&run(dir.path(), "aws", &body, extra));
        assert_eq!(id["provider"], "aws");
        assert_eq!(id["instance_id"], "i-076e9b91f7c420782");
        assert_eq!(id["region"], "us-east-1");
        assert!(id["account_id"].is_string());
    }
}

#[test]
fn aws_rsa2048_pkcs7_vector_verifies_with_and_without_at() {
    let dir = tempfile::tempdir().unwrap();
    let body = serde_json::json!({
        "document": "",
        "signature": "",
        "pkcs7": vector("teleport-iid-rsa2048-us-west-2-i-078517ca8a70a1dde.p7.b64"),
    });
    for extra in [&[][..], &["--at", "2021-09-03T21:30:00Z"]] {
        let id = identity(&run(dir.path(), "aws", &body, extra));
        assert_eq!(id["instance_id"], "i-078517ca8a70a1dde");
        assert_eq!(id["region"], "us-west-2");
    }
}

#[test]
fn aws_tampered_vector_fails_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let doc = vector("coder-iid-rsa1024-us-east-1-i-076e9b91f7c420782.document.json");
    let body = serde_json::json!({
        "document": doc.replace("i-076e9b91f7c420782", "i-076e9b91f7c420783"),
        "signature": vector("coder-iid-rsa1024-us-east-1-i-076e9b91f7c420782.signature.b64"),
    });
    let out = run(dir.path(), "aws", &body, &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("us-east-1"), "{}", out.stderr);
}

#[test]
fn azure_vector_verifies_at_its_time_and_fails_now() {
    let dir = tempfile::tempdir().unwrap();
    let body = serde_json::json!({
        "signature": vector("coder-attested-public-southcentralus-2022-04-19.p7.b64"),
        "encoding": "pkcs7",
    });
    let id = identity(&run(dir.path(), "azure", &body, &["--at", AZURE_AT]));
    assert_eq!(
        id,
        serde_json::json!({
            "provider": "azure",
            "instance_id": "bd8e7443-24a0-41f3-b949-8baf4fd1c573",
            "subscription_id": "5f130ffc-0a3e-4795-b691-4f56a12a5547",
        })
    );
    let out = run(dir.path(), "azure", &body, &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("expired"), "{}", out.stderr);
}

#[test]
fn azure_g2_vector_of_2026_verifies_at_its_time_with_no_trust_flag() {
    let dir = tempfile::tempdir().unwrap();
    let body = serde_json::json!({
        "signature": vector("coder-attested-public-eastus-2026-06-25-g2.p7.b64"),
        "encoding": "pkcs7",
    });
    let id = identity(&run(
        dir.path(),
        "azure",
        &body,
        &["--at", "2026-06-25T19:00:00Z"],
    ));
    assert_eq!(
        id,
        serde_json::json!({
            "provider": "azure",
            "instance_id": "dc18de58-292f-4794-9a5d-a4192bad0039",
            "subscription_id": "05e8b285-4ce1-46a3-b4c9-f51ba67d6acc",
        })
    );
    // Outside the document's six hours it is refused, whatever the certificates say.
    let out = run(
        dir.path(),
        "azure",
        &body,
        &["--at", "2026-06-26T02:00:00Z"],
    );
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("expired"), "{}", out.stderr);
}

#[test]
fn gcp_token_verifies_against_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, TestPki::gcp_jwks_json()).unwrap();
    let body = serde_json::to_value(pki.gcp_jwt("4242", "coder")).unwrap();
    let jwks_arg = jwks.to_str().unwrap();
    let id = identity(&run(
        dir.path(),
        "gcp",
        &body,
        &["--google-jwks-url", jwks_arg],
    ));
    assert_eq!(id["instance_id"], "4242");
    assert_eq!(id["project_id"], "test-project");
    assert_eq!(id["zone"], "us-central1-a");

    let out = run(
        dir.path(),
        "gcp",
        &body,
        &["--google-jwks-url", jwks_arg, "--google-audience", "other"],
    );
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("audience"), "{}", out.stderr);

    let at = (pki.now + chrono::Duration::hours(3)).to_rfc3339();
    let out = run(
        dir.path(),
        "gcp",
        &body,
        &["--google-jwks-url", jwks_arg, "--at", &at],
    );
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("expired"), "{}", out.stderr);
}

#[test]
fn garbage_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for provider in ["aws", "azure", "gcp"] {
        let out = run(
            dir.path(),
            provider,
            &serde_json::json!({"signature": "%%%", "json_web_token": "x.y.z", "document": "{"}),
            &["--google-jwks-url", "/nonexistent/jwks.json"],
        );
        assert_ne!(out.code, Some(0), "{provider}");
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[test]
fn allow_lists_refuse_other_accounts_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, TestPki::gcp_jwks_json()).unwrap();
    let body = serde_json::to_value(pki.gcp_jwt("4242", "coder")).unwrap();
    let jwks_arg = jwks.to_str().unwrap();
    let allowed = run(
        dir.path(),
        "gcp",
        &body,
        &[
            "--google-jwks-url",
            jwks_arg,
            "--gcp-projects",
            "other, test-project",
        ],
    );
    assert_eq!(identity(&allowed)["project_id"], "test-project");
    // Another cloud's list does not restrict this one.
    let other_cloud = run(
        dir.path(),
        "gcp",
        &body,
        &["--google-jwks-url", jwks_arg, "--aws-accounts", "123"],
    );
    assert_eq!(other_cloud.code, Some(0), "{}", other_cloud.stderr);
    let out = run(
        dir.path(),
        "gcp",
        &body,
        &[
            "--google-jwks-url",
            jwks_arg,
            "--gcp-projects",
            "prod-1,prod-2",
        ],
    );
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        out.stderr.trim(),
        r#"identity not allowed: project_id: expected one of "prod-1", "prod-2" (server allow-list --gcp-projects), got "test-project""#
    );
}
